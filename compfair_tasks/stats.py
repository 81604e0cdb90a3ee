"""Bootstrap confidence intervals and paired tests, shared by the tasks and the leaderboard."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence

import numpy as np

DEFAULT_RESAMPLES = 1000


def total(items) -> float:
    """The sum aggregation of the task YAMLs (lm-eval has mean and median but no sum)."""
    return float(np.sum(items))


def subgroup_values(name: str, value, groups_of_doc, every_group) -> dict:
    """`{name_g: value}` for the doc's own subgroups g and `{name_g: None}` for every other subgroup.

    Every doc reports every subgroup's key: lm-eval gathers data-parallel ranks' per-doc values by the keys
    rank 0 has and raises KeyError on a key another rank lacks (measured in tests/test_scale_out.py; with
    `--limit`, a rank can hold no doc of a subgroup), and warns when metrics count different numbers of docs.
    """
    return {f"{name}_{group}": value if group in groups_of_doc else None for group in every_group}


def present_mean(items) -> float:
    """The aggregation of a `subgroup_values` metric: the mean over the subgroup's docs (NaN when it has none)."""
    values = [item for item in items if item is not None]
    return float(np.mean(values)) if values else float("nan")


def _statistic_of(statistic: Callable | None):
    if statistic is None:
        return lambda sample: float(np.mean(sample))
    return statistic


def canonical_order(items: Sequence):
    """`items` sorted, so that a seeded resampling depends on which items there are, not on their order.

    lm-eval hands an aggregation the per-document values of all its processes joined rank after rank: under
    data parallelism the same documents arrive in another order than in one process, and a seeded bootstrap
    over positions would give another CI for the same numbers (tests/test_scale_out.py measures both).
    Numbers sort as numbers (NaN last); other items (per-example dicts) by their JSON text.
    """
    if _is_numeric(items):
        return np.sort(np.asarray(items, dtype=float))
    return sorted(items, key=lambda item: json.dumps(item, sort_keys=True, default=str))


def bootstrap_distribution(items: Sequence, statistic: Callable | None = None, n_resamples: int = DEFAULT_RESAMPLES,
                           seed: int = 0) -> np.ndarray:
    """Statistic of `n_resamples` resamples (with replacement) of `items`.

    `statistic` takes a list of items (any objects, e.g. per-example result dicts) and returns a
    float, so aggregates such as StereoSet's per-target averages resample whole examples.
    """
    if len(items) == 0:
        raise ValueError("cannot bootstrap an empty sample")
    statistic = _statistic_of(statistic)
    items = canonical_order(items)
    rng = np.random.default_rng(seed)
    n = len(items)
    indexable = np.asarray(items, dtype=float) if _is_numeric(items) else None
    values = np.empty(n_resamples)
    for i in range(n_resamples):
        idx = rng.integers(0, n, n)
        sample = indexable[idx] if indexable is not None else [items[j] for j in idx]
        values[i] = statistic(sample)
    return values


def _is_numeric(items: Sequence) -> bool:
    return isinstance(items, np.ndarray) or (len(items) > 0 and isinstance(items[0], (int, float, np.number)))


def bootstrap_ci(items: Sequence, statistic: Callable | None = None, confidence: float = 0.95,
                 n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of `statistic` over `items`."""
    values = bootstrap_distribution(items, statistic, n_resamples, seed)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_stderr(items: Sequence, statistic: Callable | None = None, n_resamples: int = DEFAULT_RESAMPLES,
                     seed: int = 0) -> float:
    """Bootstrap estimate of the standard error of `statistic` (the stddev of its resampled values)."""
    return float(np.std(bootstrap_distribution(items, statistic, n_resamples, seed), ddof=1))


def stratified_bootstrap_distribution(strata: Mapping[str, Sequence[float]], statistic: Callable,
                                      n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """`statistic` of the stratum means over `n_resamples` resamples that keep every stratum's size.

    Each resample draws, within every stratum separately and with replacement, as many items as the
    stratum holds, so no stratum is ever missing or resized (a pooled bootstrap would let small groups
    vanish). `statistic` takes the vector of stratum means, in sorted stratum order, and returns a float.
    """
    if not strata or any(len(values) == 0 for values in strata.values()):
        raise ValueError("a stratified bootstrap needs at least one stratum and no empty stratum")
    rng = np.random.default_rng(seed)
    means = np.empty((n_resamples, len(strata)))
    for column, key in enumerate(sorted(strata)):
        values = canonical_order(strata[key])
        means[:, column] = values[rng.integers(0, len(values), (n_resamples, len(values)))].mean(axis=1)
    return np.array([statistic(row) for row in means], dtype=float)


def stratified_bootstrap_ci(strata: Mapping[str, Sequence[float]], statistic: Callable, confidence: float = 0.95,
                            n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of a statistic of stratum means, resampling items within strata."""
    values = stratified_bootstrap_distribution(strata, statistic, n_resamples, seed)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def stratum_permutation_test(strata: Mapping[str, Sequence[float]], statistic: Callable,
                             n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> float:
    """One-sided p-value of `statistic` of the stratum means under "the strata do not differ".

    The stratum labels are shuffled over the items (stratum sizes kept); p is the share of shufflings,
    counting the observed labelling, whose statistic is at least the observed one. Unlike a bootstrap CI of a
    max - min spread, which sits above the spread of the true means, this tests whether the spread is larger
    than the spread that noise alone gives with these stratum sizes.
    """
    keys = sorted(strata)
    if len(keys) < 2 or any(len(strata[key]) == 0 for key in keys):
        raise ValueError("a permutation test across strata needs at least two non-empty strata")
    values = np.concatenate([canonical_order(strata[key]) for key in keys])
    labels = np.repeat(np.arange(len(keys)), [len(strata[key]) for key in keys])
    sizes = np.bincount(labels)
    observed = statistic(np.bincount(labels, weights=values) / sizes)
    rng = np.random.default_rng(seed)
    hits = sum(statistic(np.bincount(rng.permutation(labels), weights=values, minlength=len(keys)) / sizes)
               >= observed - 1e-12 for _ in range(n_resamples))
    return float((hits + 1) / (n_resamples + 1))


def paired_bootstrap_test(a: Sequence[float], b: Sequence[float], n_resamples: int = 10000, seed: int = 0) -> dict:
    """Paired bootstrap of mean(b - a): effect, 95% CI and a two-sided p-value for 'no difference'.

    a and b are per-item scores of two models on the same items, in the same order.
    """
    diff = _paired_differences(a, b)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (n_resamples, len(diff)))].mean(axis=1)
    effect = float(diff.mean())
    # p-value: how often the resampled mean, recentred at 0, is at least as extreme as the observed one
    p_value = float((np.abs(means - effect) >= abs(effect)).mean()) if effect != 0 else 1.0
    low, high = np.percentile(means, [2.5, 97.5])
    return {"effect": effect, "ci_low": float(low), "ci_high": float(high), "p_value": p_value, "n": len(diff)}


def paired_permutation_test(a: Sequence[float], b: Sequence[float], n_resamples: int = 10000, seed: int = 0) -> dict:
    """Sign-flip permutation test of mean(b - a) = 0 for paired scores (two-sided)."""
    diff = _paired_differences(a, b)
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=(n_resamples, len(diff)))
    null_means = (signs * diff).mean(axis=1)
    effect = float(diff.mean())
    # +1 in numerator and denominator: the observed labelling is one of the permutations
    p_value = float((np.sum(np.abs(null_means) >= abs(effect) - 1e-12) + 1) / (n_resamples + 1))
    return {"effect": effect, "p_value": p_value, "n": len(diff)}


def _paired_differences(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired tests need two equal-length, non-empty 1-D samples (got {a.shape} and {b.shape})")
    return b - a


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion successes/n (stays inside [0, 1] and is not [0, 0] at 0/n)."""
    if n <= 0:
        raise ValueError("a proportion needs at least one trial")
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def group_gap(groups: Sequence, values: Sequence[float]) -> float:
    """max - min over groups of the group means."""
    groups, values = np.asarray(groups), np.asarray(values, dtype=float)
    means = [values[groups == g].mean() for g in np.unique(groups)]
    return float(max(means) - min(means))


def paired_group_gap_test(groups: Sequence, a: Sequence[float], b: Sequence[float], n_resamples: int = 2000,
                          seed: int = 0) -> dict:
    """Paired bootstrap of gap(b) - gap(a), gap = max - min of group means (BOLD's group gap).

    a and b are two models' per-prompt values on the same prompts, in the same order, `groups` each prompt's
    group. Each resample draws prompts with replacement within every group, the same draw for both models.
    Returns the effect, its 95% percentile CI and a two-sided p-value (resampled differences recentred at the
    effect, as in `paired_bootstrap_test`; the max-min statistic is biased upward, so read p as a screen).
    """
    groups = np.asarray(groups)
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if not (a.shape == b.shape == groups.shape) or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"a group-gap test needs equal-length groups and scores (got {groups.shape}, {a.shape}, "
                         f"{b.shape})")
    labels = np.unique(groups)
    if len(labels) < 2:
        raise ValueError("a group gap needs at least two groups")
    rng = np.random.default_rng(seed)
    means_a, means_b = np.empty((n_resamples, len(labels))), np.empty((n_resamples, len(labels)))
    for j, label in enumerate(labels):
        members = np.flatnonzero(groups == label)
        draw = members[rng.integers(0, len(members), (n_resamples, len(members)))]
        means_a[:, j], means_b[:, j] = a[draw].mean(axis=1), b[draw].mean(axis=1)
    resampled = (means_b.max(axis=1) - means_b.min(axis=1)) - (means_a.max(axis=1) - means_a.min(axis=1))
    effect = group_gap(groups, b) - group_gap(groups, a)
    p_value = float((np.abs(resampled - effect) >= abs(effect)).mean()) if effect != 0 else 1.0
    low, high = np.percentile(resampled, [2.5, 97.5])
    return {"effect": float(effect), "ci_low": float(low), "ci_high": float(high), "p_value": p_value, "n": len(a)}


# --- WEAT / SEAT (Caliskan et al. 2017; May et al. 2019; as sent-bias and Bias Bench compute them) ----------


def weat_associations(targets: np.ndarray, attr_a: np.ndarray, attr_b: np.ndarray) -> np.ndarray:
    """s(w, A, B) = mean_a cos(w, a) - mean_b cos(w, b) for each row w of `targets`."""
    def unit(m):
        m = np.asarray(m, dtype=np.float64)
        return m / np.linalg.norm(m, axis=1, keepdims=True)

    w = unit(targets)
    return (w @ unit(attr_a).T).mean(axis=1) - (w @ unit(attr_b).T).mean(axis=1)


def weat_effect_size(x, y, attr_a, attr_b) -> float:
    """(mean_x s - mean_y s) / std_{X u Y}(s), std with ddof=1; 0 when every s is equal (no association)."""
    s = weat_associations(np.concatenate([x, y]), attr_a, attr_b)
    numerator = s[: len(x)].mean() - s[len(x):].mean()
    spread = s.std(ddof=1)
    return 0.0 if spread == 0 else float(numerator / spread)


def weat_permutation_p(x, y, attr_a, attr_b, n_samples: int = 100_000, seed: int = 0) -> tuple[float, bool]:
    """One-sided permutation p-value of the WEAT statistic: the share of equal-size re-partitions (X', Y') of
    X u Y with sum_{X'} s >= sum_X s (ties count, the conservative test of sent-bias).

    Exact (every partition) when there are at most `n_samples` of them; otherwise `n_samples` seeded random
    partitions, p = (1 + hits) / (1 + n_samples). Returns (p, exact). Sums within 1e-12 relative count as ties,
    so the observed partition always counts despite summation order.
    """
    import itertools
    import math

    s = weat_associations(np.concatenate([x, y]), attr_a, attr_b)
    n, total = len(x), len(s)
    observed = s[:n].sum()
    tolerance = 1e-12 * max(1.0, float(np.abs(s).sum()))
    if math.comb(total, n) <= n_samples:
        subsets = np.array(list(itertools.combinations(range(total), n)), dtype=np.intp).reshape(-1, n)
        sums = s[subsets].sum(axis=1)
        return float(np.mean(sums >= observed - tolerance)), True
    rng = np.random.default_rng(seed)
    hits, drawn = 0, 0
    while drawn < n_samples:
        chunk = min(10_000, n_samples - drawn)
        subsets = rng.random((chunk, total)).argpartition(n - 1, axis=1)[:, :n]  # a uniform random n-subset
        hits += int(np.count_nonzero(s[subsets].sum(axis=1) >= observed - tolerance))
        drawn += chunk
    return (1 + hits) / (1 + n_samples), False


def kendall_tau_c(x: Sequence[float], y: Sequence[float]) -> dict:
    """Kendall's tau-c of x and y (scipy.stats.kendalltau, variant "c") with two p-values.

    `p_two_sided` is scipy's; `p_one_sided` tests "x and y rise together" (tau > 0), as Gonçalves & Strubell
    (2023) read LM score against SS: half the two-sided p when tau > 0, else 1 - half of it (the test statistic's
    null distribution is symmetric). NaN pairs are left out; fewer than 3 pairs give NaN.
    """
    from scipy.stats import kendalltau

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 3:
        return {"tau_c": float("nan"), "p_two_sided": float("nan"), "p_one_sided": float("nan"), "n": int(len(x))}
    result = kendalltau(x, y, variant="c")
    tau, p = float(result.statistic), float(result.pvalue)
    one_sided = p / 2 if tau > 0 else 1 - p / 2
    return {"tau_c": tau, "p_two_sided": p, "p_one_sided": float(one_sided), "n": int(len(x))}


def interpolate_along(reference_x: Sequence[float], reference_y: Sequence[float], x: float) -> float:
    """y at `x` by linear interpolation along the reference points sorted by x (NaN outside their x range).

    Points with equal x are averaged first, so the reference is a function of x. No extrapolation: a value
    beyond the reference's smallest or largest x has no prediction.
    """
    ref_x, ref_y = np.asarray(reference_x, dtype=float), np.asarray(reference_y, dtype=float)
    keep = np.isfinite(ref_x) & np.isfinite(ref_y)
    ref_x, ref_y = ref_x[keep], ref_y[keep]
    if len(ref_x) < 2 or not np.isfinite(x):
        return float("nan")
    unique_x, inverse = np.unique(ref_x, return_inverse=True)
    mean_y = np.bincount(inverse, weights=ref_y) / np.bincount(inverse)
    if len(unique_x) < 2 or not unique_x[0] <= x <= unique_x[-1]:
        return float("nan")
    return float(np.interp(x, unique_x, mean_y))


def shared_resample_counts(n_items: int, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """[n_resamples, n_items] counts: how often each item is drawn in each bootstrap resample of n_items.

    One draw over the union of several models' documents, applied to every model (a model takes its own
    documents as many times as drawn), keeps the resamples of models that share documents paired.
    """
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_items, np.full(n_items, 1.0 / n_items), size=n_resamples)


def quality_matched_difference(reference_quality: Sequence[float], reference_value: Sequence[float],
                               quality: float, value: float) -> dict:
    """The reference's value at `quality` (interpolated, see `interpolate_along`) and value minus it."""
    predicted = interpolate_along(reference_quality, reference_value, quality)
    return {"predicted": predicted, "difference": value - predicted if np.isfinite(predicted) else float("nan")}


def quality_matched_bootstrap(reference_quality: np.ndarray, reference_value: np.ndarray, quality: np.ndarray,
                              value: np.ndarray, confidence: float = 0.95) -> dict:
    """Percentile CI of the quality-matched difference over paired bootstrap resamples.

    reference_quality, reference_value: [n_resamples, n_reference] resampled statistics of the reference
    points; quality, value: [n_resamples] the compared model's, all from the same document draws
    (`shared_resample_counts`). A resample whose quality falls outside its reference's range gives no
    difference; `outside` is their share (the CI is over the others, and NaN when none is left).
    """
    defined = np.isfinite(quality) & np.isfinite(value)  # a resample without a document of a subgroup: no value
    differences = np.array([quality_matched_difference(rq, rv, q, v)["difference"] for rq, rv, q, v in
                            zip(reference_quality[defined], reference_value[defined], quality[defined], value[defined])])
    finite = differences[np.isfinite(differences)]
    outside = 1 - len(finite) / len(differences) if len(differences) else float("nan")
    if len(finite) == 0:
        return {"ci_low": float("nan"), "ci_high": float("nan"), "outside": outside}
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return {"ci_low": float(low), "ci_high": float(high), "outside": float(outside)}
