"""The quality-matched control: did a compressed model change more than its loss of LM quality predicts?

For every compressed model and fairness metric, the reference series (models that differ only in quality:
training checkpoints, sizes, or the teacher with seeded weight noise) predicts the metric at the compressed
model's LM quality by linear interpolation along the reference sorted by quality
(`compfair_tasks.stats.interpolate_along`). The difference observed - predicted gets a paired bootstrap CI:
each resample draws documents once per task, over the union of the documents any cell logged, and every model
(the compressed one and each reference point) recomputes its quality and its metric from the same draw
(`stats.shared_resample_counts`). A quality outside the reference's range gets no prediction (no extrapolation).

The spec's `control:` (read from the study folder's study.json):
  reference: none              # default: each series' uncompressed cells; or any compression label/method,
                               # e.g. noise (then the member's noise cells plus its uncompressed cell, scale 0);
                               # or "<series> / <compression>" for one named series against every compressed cell
  quality: lms | perplexity | <task>:<metric>     # default lms if a StereoSet task ran, else perplexity
  compare: [<task>:<metric> or <metric>, ...]     # default: the bias and toxicity metrics found (FAIRNESS)
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pandas as pd

from compfair_tasks import stats
from compfair_tasks.errors import CompfairError

from .points import Study, matches_reported, member_name, metric_label, statistic_of

FAIRNESS = ("ss", "pct_stereotype", "emt", "tox_prob", "toxic_frac", "anti_pct", "pro_pct")
QUALITY_METRICS = {"perplexity": ("word_perplexity",), "lms": ("lms",)}
STEREOSET_TASKS = ("compfair_stereoset_intrasentence", "compfair_stereoset", "compfair_stereoset_intersentence")
COLUMNS = ["cell", "alias", "series", "compression", "reference", "task", "metric", "quality_metric", "quality",
           "reference_low", "reference_high", "value", "predicted", "difference", "ci_low", "ci_high",
           "resamples_outside", "verdict", "reference_cells"]


def _split(key: str) -> tuple[str | None, str]:
    return tuple(key.split(":", 1)) if ":" in key else (None, key)


def quality_key(study: Study, quality: str | None) -> str:
    """The "task:metric" of the LM-quality measure the control matches on."""
    keys = [c for c in study.wide.columns if ":" in c]
    wanted = quality or ("lms" if any(k.endswith(":lms") for k in keys) else "perplexity")
    task, metric = _split(wanted)
    names = QUALITY_METRICS.get(metric, (metric,))
    found = [k for k in keys if _split(k)[1] in names and (task is None or _split(k)[0] == task)]
    found.sort(key=lambda k: STEREOSET_TASKS.index(_split(k)[0]) if _split(k)[0] in STEREOSET_TASKS else 99)
    if not found:
        raise CompfairError(f"control quality {wanted!r}: no such metric in the study's results; use lms, "
                            "perplexity or one of " + ", ".join(keys[:8]))
    return found[0]


def compared_keys(study: Study, compare: list[str] | None, quality: str) -> list[str]:
    keys = [c for c in study.wide.columns if ":" in c and c != quality]
    if compare:
        chosen = [k for k in keys if any(k == c or _split(k)[1] == c for c in compare)]
        missing = [c for c in compare if not any(k == c or _split(k)[1] == c for k in keys)]
        if missing:
            raise CompfairError(f"control compare: {', '.join(missing)} not in the study's results; use metrics "
                                f"such as {', '.join(keys[:6])}")
        return chosen
    return [k for k in keys if _split(k)[1].startswith(FAIRNESS) and not _split(k)[1].startswith(("ss_inter", "ss_intra"))]


def reference_parts(reference) -> tuple[str, str]:
    """(series or "", compression) of `reference`: "none", "noise", "<series> / <compression>", or the mapping
    form {<compression>: {series: <series>}} (e.g. {noise: {series: smollm2-135m}})."""
    if isinstance(reference, dict) and len(reference) == 1:
        (named, options), = reference.items()
        series = (options or {}).get("series", "") if isinstance(options, dict) else ""
        return str(series).strip(), str(named).strip()
    if reference is None or isinstance(reference, str):
        named_series, _, named = (reference or "none").strip().rpartition("/")
        return named_series.strip(), named.strip()
    raise CompfairError(f"control reference {reference!r}: use none, a compression (e.g. noise), "
                        "'<series> / <compression>' or {<compression>: {series: <series>}}")


def groups(study: Study, reference) -> list[tuple[str, list[dict], list[dict]]]:
    """(reference description, reference cells, compared cells) for the spec's `reference`."""
    done = [c for c in study.cells if c["id"] in study.runs]
    named_series, named = reference_parts(reference)

    def is_reference(cell):
        return named in (cell["compression"]["method"], cell["compression"].get("label"))

    if named_series:  # that series' reference cells (and, for a noise series, its uncompressed scale-0 cells)
        ref = [c for c in done if c["series"] == named_series and is_reference(c)]
        if not ref:
            raise CompfairError(f"control reference {reference}: no finished cell of series {named_series!r} "
                                f"with compression {named!r}; name a series and compression of the study")
        if named != "none":
            ref = [c for c in done if c["series"] == named_series and c["compression"]["method"] == "none"] + ref
        compared = [c for c in done if c["compression"]["method"] != "none" and not is_reference(c)]
        return [(f"{named_series} {'uncompressed' if named == 'none' else named + ' series'}", ref, compared)]
    result = []
    if named == "none":  # each series' uncompressed members
        for series in dict.fromkeys(c["series"] for c in done):
            members = [c for c in done if c["series"] == series]
            result.append((f"{series} uncompressed", [c for c in members if c["compression"]["method"] == "none"],
                           [c for c in members if c["compression"]["method"] != "none"]))
        return result
    for series, member in dict.fromkeys((c["series"], c["member"].get("label")) for c in done):
        members = [c for c in done if (c["series"], c["member"].get("label")) == (series, member)]
        ref = [c for c in members if is_reference(c) or c["compression"]["method"] == "none"]
        if any(is_reference(c) for c in ref):
            result.append((f"{member_name(ref[0])} {named} series", ref,
                           [c for c in members if c not in ref]))
    if not result:
        raise CompfairError(f"control reference {reference!r}: no finished cell has that compression; use none, "
                            "a compression of the study (e.g. noise) or '<series> / <compression>'")
    return result


class Resampler:
    """Bootstrap statistics of every (cell, task, metric), all cells of a task drawing the same documents."""

    def __init__(self, study: Study, n_resamples: int, seed: int):
        self.study, self.n_resamples, self.seed = study, n_resamples, seed
        self._counts: dict[str, tuple[dict, np.ndarray]] = {}
        self._values: dict[tuple, np.ndarray | None] = {}

    def _task_draws(self, task: str):
        if task not in self._counts:
            union = sorted({identity for cell in self.study.runs for values in
                            self.study.doc_values(cell, task).values() for identity in values})
            position = {identity: i for i, identity in enumerate(union)}
            counts = stats.shared_resample_counts(len(union), self.n_resamples,
                                                  self.seed + zlib.crc32(task.encode())) if union else None
            self._counts[task] = (position, counts)
        return self._counts[task]

    def values(self, cell_id: str, key: str, reported: float) -> np.ndarray | None:
        """[n_resamples] resampled values of a cell's metric, or None without per-document values."""
        if (cell_id, key) not in self._values:
            self._values[(cell_id, key)] = self._compute(cell_id, key, reported)
        return self._values[(cell_id, key)]

    def _compute(self, cell_id, key, reported):
        task, metric = _split(key)
        logged = self.study.doc_values(cell_id, task).get(metric)
        if not logged:
            return None
        identities, items = list(logged), list(logged.values())
        statistic = statistic_of(metric, items)
        if not matches_reported(statistic, len(items), reported):
            return None
        position, counts = self._task_draws(task)
        columns = counts[:, [position[i] for i in identities]]
        order = np.arange(len(items))
        return np.array([statistic(np.repeat(order, row)) for row in columns])


def _verdict(metric: str, row: dict, reference: str) -> str:
    if not math.isfinite(row["predicted"]):
        return (f"quality {row['quality']:.4g} lies outside the reference's range [{row['reference_low']:.4g}, "
                f"{row['reference_high']:.4g}]: no prediction (no extrapolation)")
    said = (f"{metric_label(metric)} {row['value']:.2f} where {reference} predicts {row['predicted']:.2f} at the same quality "
            f"(difference {row['difference']:+.2f}")
    if not math.isfinite(row["ci_low"]):
        return said + "; no per-document values for a CI)"
    said += f", 95% CI {row['ci_low']:+.2f} to {row['ci_high']:+.2f})"
    if row["ci_low"] > 0 or row["ci_high"] < 0:
        return said + ": it changed more than its loss of quality predicts"
    return said + ": no more than its loss of quality predicts (the CI includes 0)"


def control_rows(study: Study, control: dict | None = None, n_resamples: int = stats.DEFAULT_RESAMPLES,
                 seed: int = 0, resampler: Resampler | None = None) -> pd.DataFrame:
    """One row per (compressed cell, compared metric): see the module docstring."""
    control = control or {}
    wide = study.wide.set_index("cell")
    if wide.empty:
        return pd.DataFrame(columns=COLUMNS)
    quality = quality_key(study, control.get("quality"))
    compare = compared_keys(study, control.get("compare"), quality)
    resampler = resampler or Resampler(study, n_resamples, seed)
    rows = []
    for reference, ref_cells, compared in groups(study, control.get("reference")):
        ref_ids = [c["id"] for c in ref_cells if math.isfinite(wide.at[c["id"], quality])]
        if len(ref_ids) < 2:
            continue
        ref_quality = wide.loc[ref_ids, quality].to_numpy(float)
        for cell in compared:
            q = wide.at[cell["id"], quality]
            for key in compare:
                ref_value, value = wide.loc[ref_ids, key].to_numpy(float), wide.at[cell["id"], key]
                if not (math.isfinite(q) and math.isfinite(value)):
                    continue
                row = {"cell": cell["id"], "alias": wide.at[cell["id"], "alias"], "series": cell["series"],
                       "compression": wide.at[cell["id"], "compression"], "reference": reference,
                       "task": _split(key)[0], "metric": _split(key)[1], "quality_metric": quality, "quality": q,
                       "reference_low": float(ref_quality.min()), "reference_high": float(ref_quality.max()),
                       "value": value, **stats.quality_matched_difference(ref_quality, ref_value, q, value),
                       "ci_low": math.nan, "ci_high": math.nan, "resamples_outside": math.nan}
                if math.isfinite(row["predicted"]):
                    row.update(_bootstrap(resampler, ref_ids, cell["id"], quality, key, wide))
                row["verdict"] = _verdict(_split(key)[1], row, reference)
                row["reference_cells"] = " ".join(ref_ids)
                rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def _bootstrap(resampler: Resampler, ref_ids: list[str], cell_id: str, quality: str, key: str,
               wide: pd.DataFrame) -> dict:
    series = [[resampler.values(c, k, wide.at[c, k]) for c in [*ref_ids, cell_id]] for k in (quality, key)]
    if any(values is None for values in series[0] + series[1]):
        return {}
    ref_quality, ref_value = np.column_stack(series[0][:-1]), np.column_stack(series[1][:-1])
    result = stats.quality_matched_bootstrap(ref_quality, ref_value, series[0][-1], series[1][-1])
    return {"ci_low": result["ci_low"], "ci_high": result["ci_high"], "resamples_outside": result["outside"]}
