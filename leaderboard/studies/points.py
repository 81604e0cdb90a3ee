"""A study folder's finished cells as points: one row per (cell, task, metric), and their per-document values.

Reads only `plan.json`, `cells/<id>/record.json` and the cell's lm_eval `results/` (results_*.json,
samples_*.jsonl), so a study run locally and one run on Slurm give the same points. A cell counts when its
record says "done" (also when the code changed since: the report shows what was measured); others are
listed as left out. The value is lm_eval's aggregate; the CI is compfair's
bootstrap CI where the task reports one (`<metric>_ci_low/_ci_high`), else ±1.96 lm-eval standard errors.
"""

from __future__ import annotations

import json
import math
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from leaderboard.collect import Run, read_runs, task_metrics
from leaderboard.paired import NOT_TESTED, doc_identity

from .cells import read_record
from .plan import PLAN, cell_dir

COMPANIONS = ("_stderr", "_ci_low", "_ci_high")
COLUMNS = ["cell", "alias", "series", "series_order", "axis_name", "axis", "member", "compression", "method",
           "level", "task", "metric", "value", "ci_low", "ci_high", "ci_kind"]
Z95 = 1.959964

NAMES = {"ss": "SS", "lms": "LM score", "icat": "ICAT", "word_perplexity": "word perplexity",
         "byte_perplexity": "byte perplexity", "pct_stereotype": "% stereotype", "emt": "expected max. toxicity",
         "tox_prob": "toxicity probability", "toxic_frac": "toxic share"}


def metric_label(metric: str) -> str:
    """"ss_gender" -> "SS gender", "lms" -> "LM score"; unknown names stay as they are."""
    for name, label in sorted(NAMES.items(), key=lambda item: -len(item[0])):
        if metric == name or metric.startswith(name + "_"):
            return label + metric[len(name):].replace("_", " ")
    return metric


def key_label(key: str) -> str:
    """"compfair_stereoset_intrasentence:ss" -> "SS (stereoset_intrasentence)"."""
    task, _, metric = key.rpartition(":")
    return f"{metric_label(metric)} ({task.removeprefix('compfair_')})" if task else metric_label(metric)


def member_name(cell: dict) -> str:
    """The member's label (its folder's name without one); a bare step or order number gets its series."""
    member = str(cell["member"].get("label") or Path(str(cell["member"]["pretrained"])).name)
    return f"{cell['series']}@{member}" if member.replace(".", "", 1).isdigit() else member


def alias(cell: dict) -> str:
    """A short name for legends and tables: the member's name, then the compression's unless none."""
    member = member_name(cell)
    compression = cell["compression"]
    return member if compression["method"] == "none" else f"{member} {compression_label(compression)}"


def compression_label(compression: dict) -> str:
    if compression.get("label"):
        return str(compression["label"])
    level = compression.get("level")
    return compression["method"] if level is None else f"{compression['method']} {level:g}" \
        if isinstance(level, (int, float)) else f"{compression['method']} {level}"


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class Study:
    """A study folder read once: its cells (plan order), each finished cell's lm_eval run, and problems."""

    def __init__(self, folder):
        from compfair_tasks.errors import CompfairError

        self.folder = Path(folder)
        plan = _read_json(self.folder / PLAN)
        if not isinstance(plan, list):
            raise CompfairError(f"{self.folder}: no readable plan.json; give a folder made by `compfair study run`")
        self.cells = plan
        self.problems: list[str] = []
        self.runs: dict[str, Run] = {}
        for cell in plan:
            record = read_record(cell_dir(self.folder, cell["id"]))
            if not isinstance(record, dict) or record.get("status") != "done":
                state = "failed" if isinstance(record, dict) else "not run"
                self.problems.append(f"cell {cell['id']}: {state}; left out"
                                     + (f" ({record.get('error')})" if isinstance(record, dict) and
                                        record.get("error") else ""))
                continue
            results = cell_dir(self.folder, cell["id"]) / (record.get("results_dir") or "results")
            runs = read_runs([results], self.problems)
            if len(runs) != 1:
                self.problems.append(f"cell {cell['id']}: {len(runs)} lm_eval runs in {results}; left out")
                continue
            self.runs[cell["id"]] = runs[0]
        self._samples: dict[tuple[str, str], dict] = {}

    @cached_property
    def points(self) -> pd.DataFrame:
        rows = []
        for cell in self.cells:
            run = self.runs.get(cell["id"])
            if run is None:
                continue
            info = {"cell": cell["id"], "alias": alias(cell), "series": cell["series"],
                    "series_order": cell.get("series_order", 0), "axis_name": cell["axis"]["name"],
                    "axis": cell["axis"]["value"], "member": cell["member"].get("label"),
                    "compression": compression_label(cell["compression"]),
                    "method": cell["compression"]["method"], "level": cell["compression"].get("level")}
            for task in sorted(run.results):
                metrics = task_metrics(run.results[task])
                for metric, value in metrics.items():
                    if metric.endswith(COMPANIONS) or metric in NOT_TESTED:
                        continue
                    low, high, kind = _ci(metrics, metric, value)
                    rows.append({**info, "task": task, "metric": metric, "value": value, "ci_low": low,
                                 "ci_high": high, "ci_kind": kind})
        return pd.DataFrame(rows, columns=COLUMNS)

    @cached_property
    def wide(self) -> pd.DataFrame:
        """One row per finished cell (plan order), columns "task:metric" plus the cell's info columns."""
        points = self.points
        if points.empty:
            return pd.DataFrame(columns=COLUMNS[:10])
        values = points.assign(key=points["task"] + ":" + points["metric"]).pivot(
            index="cell", columns="key", values="value")
        info = points.drop_duplicates("cell").set_index("cell")[COLUMNS[1:10]]
        return info.join(values).reset_index()  # `points` is in plan order, so is `info`

    def doc_values(self, cell_id: str, task: str) -> dict[str, dict[str, object]]:
        """metric -> {document identity: the value lm_eval logged for it} of a cell's samples file (None values
        and documents of other subgroups left out); {} without a samples file."""
        key = (cell_id, task)
        if key not in self._samples:
            run = self.runs.get(cell_id)
            path = run.samples.get(task) if run is not None else None
            self._samples[key] = _read_doc_values(path, self.problems) if path else {}
        return self._samples[key]


def _ci(metrics: dict, metric: str, value: float) -> tuple[float, float, str]:
    low, high = metrics.get(f"{metric}_ci_low"), metrics.get(f"{metric}_ci_high")
    if low is not None and high is not None:
        return low, high, "bootstrap"
    stderr = metrics.get(f"{metric}_stderr")
    if stderr is not None and math.isfinite(stderr):
        return value - Z95 * stderr, value + Z95 * stderr, "stderr"
    return math.nan, math.nan, ""


def _read_doc_values(path: Path, problems: list[str]) -> dict[str, dict[str, object]]:
    values: dict[str, dict[str, object]] = {}
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if not line.strip():
                    continue
                sample = json.loads(line)
                identity = doc_identity(sample)
                if sample.get("filter", "none") != "none":
                    identity = f"{identity}|{sample['filter']}"
                for metric in sample.get("metrics") or []:
                    if sample.get(metric) is not None:
                        values.setdefault(metric, {})[identity] = sample[metric]
    except (OSError, ValueError) as error:
        problems.append(f"{path}: samples not readable ({error}); no per-document CI from it")
        return {}
    return values


def statistic_of(metric: str, logged: list) -> callable | None:
    """A function of an index array into `logged` (one metric's per-document values) that recomputes the
    metric the way its task aggregates it; None for a metric whose aggregation compfair cannot redo here.

    StereoSet records -> compfair_tasks.stereoset's per-target SS/LMS/ICAT; (log-likelihood, words or bytes)
    pairs -> lm-eval's weighted perplexity (word_/byte_perplexity) or bits per byte; numbers -> their mean.
    The caller checks that all indices give the reported value (`matches_reported`).
    """
    statistic = _aggregation(metric, logged)
    if statistic is None:
        return None
    # a resample can hold no document of a small subgroup (ss_gender): no value, not a warning
    return lambda idx: statistic(idx) if len(idx) else math.nan


def _aggregation(metric: str, logged: list):
    from compfair_tasks import stereoset

    first = logged[0]
    if isinstance(first, dict) and {"stereotype", "anti", "unrelated"} <= first.keys():
        which = {"ss": 0, "lms": 1, "icat": 2}.get(metric.split("_")[0])
        if which is None:
            return None
        target_idx, pro, related, n_targets = stereoset._arrays(logged)
        return lambda idx: stereoset._scores(target_idx[idx], pro[idx], related[idx], n_targets)[which]
    if isinstance(first, (list, tuple)) and len(first) == 2:
        pairs = np.asarray(logged, dtype=float)
        if metric in ("word_perplexity", "byte_perplexity"):
            return lambda idx: float(np.exp(-pairs[idx, 0].sum() / pairs[idx, 1].sum()))
        if metric == "bits_per_byte":
            return lambda idx: float(-pairs[idx, 0].sum() / pairs[idx, 1].sum() / math.log(2))
        return None
    if isinstance(first, (int, float)):
        numbers = np.asarray(logged, dtype=float)
        return lambda idx: float(numbers[idx].mean())
    return None


def matches_reported(statistic, n: int, reported: float) -> bool:
    return statistic is not None and math.isclose(statistic(np.arange(n)), reported, rel_tol=1e-6, abs_tol=1e-9)
