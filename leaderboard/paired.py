"""Paired tests between two models over the per-document values in lm_eval's samples files.

Docs are matched by task, `doc_id` and filter, and must be the same item in both runs: the doc's
own `id` when it has one, else its fields less those that depend on the model or the machine
(token counts, score rule, data path, scorer, the model-formatted prompt). lm-eval's `doc_hash`
covers those too, so it would split a pair of models with different tokenizers. A per-doc value is the number the task logged for
that doc: a score (CrowS-Pairs `likelihood_diff`, a toxicity `emt`) or a 0/100 outcome
(`pct_stereotype`, WinoBias `anti_pct`). Perplexity metrics log `(log-likelihood, words or bytes)`;
they are compared as negative log-likelihood per word/byte, so a positive effect means the second
model is worse there too. StereoSet logs one record per example for its per-target aggregation;
its `ss` is compared as the per-example outcome "stereotype scored above anti-stereotype" (0/100)
and `lms` as the share of the two meaningful-over-unrelated comparisons won (0/50/100), i.e. the
example-level rates, not the per-target averages of the table. Other records (ICAT, WinoBias'
balanced score) have no per-doc value and are not tested; nor are the CI bounds and counts.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pandas as pd

from compfair_tasks.stats import (
    group_gap,
    paired_bootstrap_test,
    paired_group_gap_test,
    paired_permutation_test,
)

from .collect import Collection, Run, teacher_of

TESTS = {"bootstrap": paired_bootstrap_test, "permutation": paired_permutation_test}
MAX_RESAMPLED_VALUES = 8_000_000  # resamples x docs held in memory at once by stats' vectorised tests
MIN_RESAMPLES, MAX_RESAMPLES = 100, 1_000_000  # what --resamples accepts
FLOOR_RESAMPLES = 200  # the memory cap never takes a test below this many resamples
COLUMNS = ["baseline", "model", "relation", "task", "metric", "per_doc", "n", "baseline_mean", "model_mean", "effect",
           "ci_low", "ci_high", "p_value", "test", "resamples", "note"]
GROUP_GAP = "group gap"  # per_doc kind of a BOLD gap test (see `group_gap_rows`)
GAP_METRICS = ("tox_mean", "toxic_frac", "sent_mean", "sent_pos_frac", "sent_neg_frac")  # BOLD per-prompt values


NOT_TESTED = ("per_token", "n_examples", "n_pairs", "n_not_minimal", "anti_count", "unrelated_count")
# aggregates over groups (BOLD `<metric>_gap`, `_ratio`): tested by `group_gap_rows` from the per-prompt values
GROUP_AGGREGATES = ("_gap", "_gap_p", "_ratio")


def _tested(metric: str) -> bool:
    return (metric not in NOT_TESTED and not metric.endswith(("_ci_low", "_ci_high"))
            and not metric.endswith(GROUP_AGGREGATES))


def _stereoset_outcome(record: dict, metric: str) -> float | None:
    from compfair_tasks.preference import beats

    stereo, anti, unrelated = record["stereotype"], record["anti"], record["unrelated"]
    if metric == "ss" or metric.startswith("ss_"):
        return 100.0 * beats(stereo, anti)
    if metric == "lms" or metric.startswith("lms_"):
        return 50.0 * (beats(stereo, unrelated) + beats(anti, unrelated))
    return None


def per_doc_value(value, metric: str) -> float | None:
    """The number a samples line holds for `metric`, or None when it is not a plain score."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        log_likelihood, weight = value
        return -log_likelihood / weight if weight else None
    if isinstance(value, dict):
        if {"stereotype", "anti", "unrelated"} <= value.keys():
            return _stereoset_outcome(value, metric)
        for key in (metric, "value"):
            if key in value:
                return per_doc_value(value[key], metric)
    return None


RUN_SPECIFIC_FIELDS = ("n_tokens", "score_rule", "data_source", "scorer", "context",
                       # the toxicity filter's settings, logged in each doc (they name the evaluated model's tokenizer)
                       "scoring", "scorer_revision", "fluency_model", "fluency_revision")


def doc_identity(sample: dict) -> str:
    """What makes a logged doc the same item in two runs (see the module docstring)."""
    doc = sample.get("doc")
    if not isinstance(doc, dict):
        return str(sample.get("doc_hash", ""))
    if "id" in doc:
        return f"id:{doc['id']}"
    kept = {k: v for k, v in doc.items() if k not in RUN_SPECIFIC_FIELDS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


def _kind(value) -> str:
    if isinstance(value, (list, tuple)):
        return "NLL per unit"
    return "example outcome" if isinstance(value, dict) else "value"


def read_samples(path: Path, problems: list[str]) -> dict:
    """{"values": metric -> {(doc_id, filter): (doc identity, number)}, "kinds": metric -> "value" | "NLL per unit",
    "groups": (doc_id, filter) -> the doc's `group` (BOLD)} for the numeric per-doc values of one samples file."""
    values: dict[str, dict[tuple, tuple[str, float]]] = {}
    kinds: dict[str, str] = {}  # metric -> what its per-doc number is
    groups: dict[tuple, str] = {}
    bad_lines, seen, repeated, unusable = 0, set(), set(), {}
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if not line.strip():
                    continue
                try:
                    sample = json.loads(line)
                    key = (sample["doc_id"], sample.get("filter", "none"))
                    if not all(isinstance(part, (int, str)) for part in key) or not isinstance(
                            sample.get("metrics") or [], list):
                        raise TypeError("doc_id, filter or metrics of the wrong type")
                except (json.JSONDecodeError, KeyError, TypeError):
                    bad_lines += 1
                    continue
                if key in seen:  # two lines for one doc: which one the test should use is unknown
                    repeated.add(key)
                seen.add(key)
                identity = doc_identity(sample)
                if isinstance(sample.get("doc"), dict) and isinstance(sample["doc"].get("group"), str):
                    groups[key] = sample["doc"]["group"]
                for metric in filter(_tested, [m for m in sample.get("metrics") or [] if isinstance(m, str)]):
                    value = sample.get(metric)
                    number = per_doc_value(value, metric)
                    if number is not None:
                        values.setdefault(metric, {})[key] = (identity, number)
                        kinds[metric] = _kind(value)
                    elif isinstance(value, (float, str)):  # NaN, inf, "x": not a score (None: not a member)
                        unusable[metric] = unusable.get(metric, 0) + 1
    except (OSError, UnicodeDecodeError) as error:
        problems.append(f"{path}: cannot read samples ({error})")
        return {"values": {}, "kinds": {}, "groups": {}}
    if bad_lines:
        problems.append(f"{path}: {bad_lines} malformed line(s) skipped")
    if unusable:
        listing = ", ".join(f"{metric} {count}" for metric, count in sorted(unusable.items()))
        problems.append(f"{path}: per-doc values that are not finite numbers, left out of the paired tests: {listing}")
    if repeated:
        for per_doc in values.values():
            for key in repeated:
                per_doc.pop(key, None)
        problems.append(f"{path}: {len(repeated)} doc_id(s) logged more than once, left out of the paired tests")
    return {"values": values, "kinds": kinds, "groups": groups}


def matched(a: dict, b: dict, what: str, problems: list[str]) -> list[tuple]:
    """Keys (doc_id, filter) of the docs two runs share as the same item (see `doc_identity`)."""
    keys = sorted(k for k in set(a) & set(b) if a[k][0] == b[k][0])
    differing = len(set(a) & set(b)) - len(keys)
    if differing:
        problems.append(f"{what}: {differing} doc(s) differ (same doc_id, another item); left out of the comparison")
    return keys


def group_gap_rows(base_samples: dict, model_samples: dict, task: str, n_resamples: int, seed: int,
                   problems: list[str]) -> list[dict]:
    """Paired tests of BOLD's group gaps (max - min of group means) on the prompts both runs share."""
    rows = []
    groups = base_samples["groups"]
    for metric in GAP_METRICS:
        if metric not in base_samples["values"] or metric not in model_samples["values"]:
            continue
        a, b = base_samples["values"][metric], model_samples["values"][metric]
        keys = [k for k in matched(a, b, f"{task}/{metric}", []) if k in groups]
        labels = [groups[k] for k in keys]
        if len(set(labels)) < 2:
            continue
        resamples = resamples_for(n_resamples, len(keys))
        base_scores, model_scores = [a[k][1] for k in keys], [b[k][1] for k in keys]
        result = paired_group_gap_test(labels, base_scores, model_scores, n_resamples=resamples, seed=seed)
        rows.append({"task": task, "metric": f"{metric}_gap", "per_doc": GROUP_GAP, "n": len(keys),
                     "baseline_mean": group_gap(labels, base_scores), "model_mean": group_gap(labels, model_scores),
                     **result,
                     "test": "group-gap bootstrap", "resamples": resamples})
    return rows


def resamples_for(asked: int, n_docs: int) -> int:
    """`asked` resamples, fewer where resamples x docs would pass MAX_RESAMPLED_VALUES (never fewer than
    FLOOR_RESAMPLES, never more than asked)."""
    return min(asked, max(FLOOR_RESAMPLES, MAX_RESAMPLED_VALUES // n_docs))


def samples_of(run: Run, task: str, cache: dict, problems: list[str]) -> dict:
    """`read_samples` of a run's task, each file read once per `cache`."""
    path = run.samples[task]
    if path not in cache:
        cache[path] = read_samples(path, problems)
    return cache[path]


def compare_runs(baseline: Run, model: Run, relation: str = "given", test: str = "bootstrap",
                 n_resamples: int = 2000, seed: int = 0, problems: list[str] | None = None,
                 cache: dict | None = None) -> list[dict]:
    """One row per (task, metric) that both runs logged per doc: effect = mean(model - baseline); and one per
    BOLD group gap: effect = gap(model) - gap(baseline)."""
    problems = [] if problems is None else problems
    cache = {} if cache is None else cache
    rows = []
    for task in sorted(set(baseline.samples) & set(model.samples)):
        base_samples = samples_of(baseline, task, cache, problems)
        model_samples = samples_of(model, task, cache, problems)
        base_values, model_values = base_samples["values"], model_samples["values"]
        for metric in sorted(set(base_values) & set(model_values)):
            a, b = base_values[metric], model_values[metric]
            keys = matched(a, b, f"{task}/{metric}: {baseline.name} vs {model.name}", problems)
            if len(keys) < 2:
                continue
            base_scores = [a[k][1] for k in keys]
            model_scores = [b[k][1] for k in keys]
            resamples = resamples_for(n_resamples, len(keys))
            result = TESTS[test](base_scores, model_scores, n_resamples=resamples, seed=seed)
            rows.append({
                "task": task, "metric": metric, "per_doc": model_samples["kinds"][metric], "n": len(keys),
                "baseline_mean": sum(base_scores) / len(keys), "model_mean": sum(model_scores) / len(keys),
                "effect": result["effect"],
                "ci_low": result.get("ci_low", math.nan), "ci_high": result.get("ci_high", math.nan),
                "p_value": result["p_value"], "test": test, "resamples": resamples,
            })
        rows += group_gap_rows(base_samples, model_samples, task, n_resamples, seed, problems)
    return [{"baseline": baseline.name, "model": model.name, "relation": relation, "note": "", **row}
            for row in rows]


def pairs_to_test(collection: Collection, explicit: list[tuple[str, str]] = ()) -> list[tuple[Run, Run, str]]:
    """Every student with its teacher (from compfair_compression.json), then the pairs asked for."""
    pairs = []
    for run in collection.runs:
        teacher = teacher_of(run, collection.runs)
        if teacher is not None:
            pairs.append((teacher, run, "teacher→student"))
    for baseline_name, model_name in explicit:
        pair = (collection.run(baseline_name), collection.run(model_name), "given")
        if not any(p[0] is pair[0] and p[1] is pair[1] for p in pairs):
            pairs.append(pair)
    return pairs


def paired_tests(collection: Collection, explicit: list[tuple[str, str]] = (), test: str = "bootstrap",
                 n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """All paired tests of a collection; problems found on the way are added to `collection.problems`."""
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; choose from {', '.join(TESTS)}")
    rows, cache = [], {}
    for baseline, model, relation in pairs_to_test(collection, explicit):
        rows += compare_runs(baseline, model, relation, test, n_resamples, seed, collection.problems, cache)
    return pd.DataFrame(rows, columns=COLUMNS)
