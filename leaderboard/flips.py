"""Flip rates: the share of preference items whose preferred sentence changed from baseline to model.

An aggregate stereotype score near the teacher's can hide many items flipping both ways. For each pair and
each preference task, items are matched as in the paired tests (doc id and identity), and each item's
preference is read from the per-doc value the task logs:
  StereoSet `ss`                100 = stereotype scored above anti-stereotype
  WinoBias `anti_pct`           100 = anti-stereotypical reading scored above the pro-stereotypical one
  CrowS-Pairs `pct_stereotype`  100 (or 1) = the more-stereotypical sentence scored higher
`to_stereotype` is the share of items the baseline did not prefer stereotypically and the model does;
`to_anti` the reverse; both with a 95% Wilson interval. to_stereotype - to_anti is the change of the
stereotype rate, so a flat aggregate with large flips in both directions is visible here.
"""

from __future__ import annotations

import pandas as pd

from compfair_tasks.stats import wilson_interval

from .collect import Collection
from .paired import matched, pairs_to_test, samples_of

PREFERENCE_METRICS = {  # task prefix -> (per-doc metric, does a positive value mean "prefers the stereotype"?)
    "compfair_stereoset": ("ss", True),
    "compfair_winobias": ("anti_pct", False),
    "compfair_crows_pairs": ("pct_stereotype", True),
    "crows_pairs": ("pct_stereotype", True),
}
COLUMNS = ["baseline", "model", "relation", "task", "n", "flipped", "to_stereotype", "to_stereotype_ci_low",
           "to_stereotype_ci_high", "to_anti", "to_anti_ci_low", "to_anti_ci_high", "note"]


def _preference(task: str) -> tuple[str, bool] | None:
    return next((rule for prefix, rule in PREFERENCE_METRICS.items() if task.startswith(prefix)), None)


def flip_counts(base: list[float], model: list[float], stereo_if_positive: bool) -> tuple[int, int]:
    """(to stereotype, to anti-stereotype) counts of two models' per-item outcomes, in the same item order."""
    def stereotyped(value):
        return (value > 0) == stereo_if_positive

    to_stereo = sum(not stereotyped(a) and stereotyped(b) for a, b in zip(base, model, strict=True))
    to_anti = sum(stereotyped(a) and not stereotyped(b) for a, b in zip(base, model, strict=True))
    return to_stereo, to_anti


def flip_rates(collection: Collection, explicit: list[tuple[str, str]] = ()) -> pd.DataFrame:
    """One row per (pair, preference task) with per-doc samples in both runs."""
    rows, cache = [], {}
    for baseline, model, relation in pairs_to_test(collection, explicit):
        for task in sorted(set(baseline.samples) & set(model.samples)):
            rule = _preference(task)
            if rule is None:
                continue
            metric, stereo_if_positive = rule
            a = samples_of(baseline, task, cache, collection.problems)["values"].get(metric)
            b = samples_of(model, task, cache, collection.problems)["values"].get(metric)
            if not a or not b:
                continue
            keys = matched(a, b, f"{task}/{metric} flips: {baseline.name} vs {model.name}", [])
            if not keys:
                continue
            to_stereo, to_anti = flip_counts([a[k][1] for k in keys], [b[k][1] for k in keys], stereo_if_positive)
            row = {"baseline": baseline.name, "model": model.name, "relation": relation, "task": task,
                   "n": len(keys), "flipped": (to_stereo + to_anti) / len(keys), "note": ""}
            for name, count in (("to_stereotype", to_stereo), ("to_anti", to_anti)):
                row[name] = count / len(keys)
                row[f"{name}_ci_low"], row[f"{name}_ci_high"] = wilson_interval(count, len(keys))
            rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)
