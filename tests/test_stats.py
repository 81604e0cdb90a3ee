import numpy as np
import pytest

from compfair_tasks import stats


def test_bootstrap_ci_of_a_constant_is_the_constant():
    assert stats.bootstrap_ci([2.0] * 20) == (2.0, 2.0)


def test_bootstrap_stderr_of_the_mean_matches_the_formula():
    values = np.random.default_rng(1).normal(size=400)
    analytic = values.std(ddof=1) / np.sqrt(len(values))
    assert stats.bootstrap_stderr(values, n_resamples=4000) == pytest.approx(analytic, rel=0.1)


def test_bootstrap_resamples_whole_items_for_custom_statistics():
    items = [{"won": 1}, {"won": 0}, {"won": 1}, {"won": 1}]
    low, high = stats.bootstrap_ci(items, statistic=lambda sample: 100 * np.mean([i["won"] for i in sample]))
    assert 0 <= low <= 75 <= high <= 100


def test_paired_tests_on_identical_scores_find_nothing():
    a = [0.1, 0.5, 0.9, 0.3]
    assert stats.paired_bootstrap_test(a, a)["p_value"] == 1.0
    assert stats.paired_permutation_test(a, a)["p_value"] == 1.0


def test_paired_tests_find_a_consistent_shift():
    rng = np.random.default_rng(0)
    a = rng.uniform(size=60)
    b = a + 0.2 + rng.normal(scale=0.01, size=60)
    boot = stats.paired_bootstrap_test(a, b)
    perm = stats.paired_permutation_test(a, b, n_resamples=2000)
    assert boot["effect"] == pytest.approx(np.mean(b - a))
    assert boot["ci_low"] > 0.15 and boot["p_value"] < 0.01
    assert perm["p_value"] == pytest.approx(1 / 2001)


def test_paired_tests_reject_unpaired_input():
    with pytest.raises(ValueError, match="equal-length"):
        stats.paired_permutation_test([1, 2], [1, 2, 3])


def _shuffled(items, seed=3):
    order = np.random.default_rng(seed).permutation(len(items))
    return [items[i] for i in order]


def test_every_task_ci_depends_on_the_items_not_their_order():
    """lm-eval joins data-parallel ranks' per-doc values rank after rank: the same docs in another order must
    give the same CIs and p-values (a seeded bootstrap over positions would not)."""
    from compfair_tasks import bold, stereoset, toxicity, winobias

    rng = np.random.default_rng(0)
    values = list(rng.uniform(size=30))
    pairs = [[group, float(v)] for group, v in zip(["a", "b", "c"] * 10, rng.uniform(size=30))]
    story = [{"target": t, "stereotype": float(s), "anti": float(a), "unrelated": float(u)}
             for t, s, a, u in zip("ABC" * 10, rng.normal(size=30), rng.normal(size=30), rng.normal(size=30) - 1)]
    wino = [{"anti_gender": g, "pro": float(p), "anti": float(a)}
            for g, p, a in zip(["female", "male"] * 15, rng.normal(size=30), rng.normal(size=30))]
    checks = [(toxicity.mean_ci_low, values), (toxicity.total_ci_high, values), (toxicity.nanmean_ci_low, values),
              (bold.gap_ci_low, pairs), (bold.gap_ci_high, pairs), (bold.gap_p, pairs),
              (stereoset.agg_ss_ci_low, story), (stereoset.agg_icat_ci_high, story),
              (winobias.agg_balanced_ci_low, wino), (winobias.agg_balanced_ci_high, wino)]
    for aggregate, items in checks:
        in_order, shuffled = aggregate(items), aggregate(_shuffled(items))
        assert not np.isnan(in_order), aggregate.__name__
        assert shuffled == pytest.approx(in_order, rel=1e-12, abs=1e-12), aggregate.__name__


def test_canonical_order_sorts_numbers_and_records():
    assert list(stats.canonical_order([3.0, float("nan"), 1.0])[:2]) == [1.0, 3.0]
    records = [{"b": 2, "a": 1}, {"a": 0, "b": 5}]
    assert stats.canonical_order(records) == [records[1], records[0]]
