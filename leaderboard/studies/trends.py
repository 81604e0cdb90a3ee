"""Trend statistics of a study (Gonçalves & Strubell 2023): Kendall tau-c of StereoSet LM score against SS per
domain, and the checkpoint with the best LM score per series and compression (their Tables 2-3)."""

from __future__ import annotations

import math

import pandas as pd

from compfair_tasks import stats
from compfair_tasks.stereoset import DOMAINS

TAU_COLUMNS = ["task", "domain", "models", "n", "tau_c", "p_one_sided", "p_two_sided"]
UNCOMPRESSED = "uncompressed"
ALL = "all"


def stereoset_tasks(wide: pd.DataFrame) -> list[str]:
    """StereoSet tasks that logged per-domain SS and LM score."""
    return sorted({c.split(":")[0] for c in wide.columns if c.endswith(":ss_gender") and
                   f"{c.split(':')[0]}:lms_gender" in wide.columns})


def tau_table(wide: pd.DataFrame, task: str) -> pd.DataFrame:
    """Kendall tau-c of LM score (x) and SS (y) per domain: uncompressed, each compression, and all models.

    One-sided p: "LM score and SS rise together" (stats.kendall_tau_c)."""
    rows = []
    subsets = [(UNCOMPRESSED, wide["method"] == "none")]
    subsets += [(label, wide["compression"] == label) for label in
                dict.fromkeys(wide.loc[wide["method"] != "none", "compression"])]
    subsets.append((ALL, pd.Series(True, index=wide.index)))
    for domain in DOMAINS:
        x, y = f"{task}:lms_{domain}", f"{task}:ss_{domain}"
        if x not in wide or y not in wide:
            continue
        for name, chosen in subsets:
            result = stats.kendall_tau_c(wide.loc[chosen, x], wide.loc[chosen, y])
            rows.append({"task": task, "domain": domain, "models": name, **result})
    return pd.DataFrame(rows, columns=TAU_COLUMNS)


def best_checkpoints(wide: pd.DataFrame, task: str) -> pd.DataFrame:
    """Per series and compression, the member with the highest LM score (the first in plan order on a tie),
    its axis value, LM score and SS overall and per domain."""
    lms = f"{task}:lms"
    columns = ["series", "compression", "best", "axis_name", "axis", "alias", "lms", "ss",
               *[f"ss_{d}" for d in DOMAINS], "members"]
    rows = []
    for (series, compression), group in wide.groupby(["series", "compression"], sort=False):
        scored = group[group[lms].map(lambda v: isinstance(v, float) and math.isfinite(v))] \
            if lms in group else group.iloc[:0]
        if scored.empty:
            continue
        best = scored.loc[scored[lms].idxmax()]
        rows.append({"series": series, "compression": compression, "best": best["member"],
                     "axis_name": best["axis_name"], "axis": best["axis"], "alias": best["alias"], "lms": best[lms],
                     "ss": best.get(f"{task}:ss", math.nan),
                     **{f"ss_{d}": best.get(f"{task}:ss_{d}", math.nan) for d in DOMAINS}, "members": len(scored)})
    return pd.DataFrame(rows, columns=columns)
