"""`compfair study report DIR`: a study's page (report/index.html), its points (points.csv) and figures.

Reads only plan.json, study.json (the spec's name and `control:`), the cells' record.json and their lm_eval
results and samples (see points.py), so a local and a Slurm run of a study give the same report. Written:
points.csv (every point, its cell's LM quality beside it), control.csv (the quality-matched control,
control.py), trends.csv (Kendall tau-c), best.csv (best checkpoint per series and compression), one PNG per
figure, and index.html with the figures inlined (it works from file:// and needs no network).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import os
from pathlib import Path

import jinja2
import pandas as pd

from compfair_tasks import stats

from . import figures, trends
from .control import FAIRNESS, control_rows, quality_key
from .points import Study

TEMPLATE = Path(__file__).resolve().parent.parent / "templates" / "study.html.j2"
PLOTTED = ("lms", "icat", "word_perplexity", "ss", *FAIRNESS)
QUALITY_BESIDE = ("perplexity", "lms")  # control.quality_key names


def study_settings(folder: Path) -> dict:
    """{"name", "control"} from study.json (written by `compfair study run`); defaults when absent."""
    path = folder / "study.json"
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        settings = {}
    return {"name": settings.get("name") or folder.name, "control": settings.get("control") or {}}


def points_with_quality(study: Study) -> pd.DataFrame:
    """The points, each with its cell's LM quality (perplexity, LM score) in columns beside it."""
    points = study.points.copy()
    for name in QUALITY_BESIDE:
        try:
            key = quality_key(study, name)
        except Exception:  # noqa: BLE001 - the study has no such metric: no column
            continue
        points[f"quality_{name}"] = points["cell"].map(study.wide.set_index("cell")[key])
        points[f"quality_{name}_metric"] = key
    return points


def _plotted(points: pd.DataFrame) -> list[tuple[str, str]]:
    keys = points[["task", "metric"]].drop_duplicates()
    keep = keys["metric"].map(lambda m: m.startswith(PLOTTED) and not m.startswith(("ss_inter", "ss_intra",
                                                                                     "lms_", "icat_")))
    return [tuple(k) for k in keys[keep].itertuples(index=False)]


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def _inline(path: Path | None) -> str | None:
    return None if path is None else "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1e4 else f"{value:.3g}"
    return str(value)


def _table(frame: pd.DataFrame, columns: dict[str, str], digits: dict[str, int] | None = None) -> dict:
    digits = digits or {}
    return {"header": list(columns.values()),
            "rows": [[_fmt(row[c], digits.get(c, 2)) for c in columns] for _, row in frame.iterrows()]}


def build_report(study_dir, output=None, n_resamples: int = stats.DEFAULT_RESAMPLES, seed: int = 0) -> Path:
    """Write the study's report into `output` (default <study>/report) and return its index.html."""
    folder = Path(study_dir)
    study = Study(folder)
    settings = study_settings(folder)
    output = Path(output) if output else folder / "report"
    output.mkdir(parents=True, exist_ok=True)
    points = points_with_quality(study)
    _write_atomic(output / "points.csv", points.to_csv(index=False))
    wide = study.wide
    sections = {"along": [], "stereoset": [], "control": None}
    for task, metric in _plotted(points):
        path = figures.metric_along_axis(points, task, metric, metric, output / f"along_{task}_{metric}.png")
        if path:
            sections["along"].append({"title": f"{metric} ({task})", "src": _inline(path)})
    tau_frames, best_frames = [], []
    for task in trends.stereoset_tasks(wide):
        tau, best = trends.tau_table(wide, task), trends.best_checkpoints(wide, task)
        tau_frames.append(tau)
        best_frames.append(best.assign(task=task))
        sections["stereoset"].append({
            "task": task, "figure": _inline(figures.lms_against_ss(wide, task, output / f"lms_ss_{task}.png")),
            "tau": _table(tau, {"domain": "domain", "models": "models", "n": "n", "tau_c": "Kendall τc",
                                "p_one_sided": "one-sided p", "p_two_sided": "two-sided p"},
                          {"tau_c": 3, "p_one_sided": 4, "p_two_sided": 4}),
            "best": _table(best, {"series": "series", "compression": "compression", "best": "best checkpoint",
                                  "lms": "LM score", "ss": "SS", **{f"ss_{d}": f"SS {d}" for d in trends.DOMAINS},
                                  "members": "checkpoints"})})
    _write_atomic(output / "trends.csv", pd.concat(tau_frames).to_csv(index=False) if tau_frames else "")
    _write_atomic(output / "best.csv", pd.concat(best_frames).to_csv(index=False) if best_frames else "")
    control = _control(study, settings["control"], n_resamples, seed, output)
    if control is not None:
        frame, quality = control
        _write_atomic(output / "control.csv", frame.to_csv(index=False))
        keys = list(dict.fromkeys(frame["task"] + ":" + frame["metric"]))
        main_key = next((k for k in keys if k.endswith(":ss")), keys[0] if keys else None)
        sections["control"] = {
            "quality": quality, "main": main_key, "reference": settings["control"].get("reference") or "none",
            "scatter": _inline(figures.control_scatter(wide, frame, main_key, quality, output / "control.png"))
            if main_key else None,
            "forest": _inline(figures.control_forest(frame, main_key, output / "control_difference.png"))
            if main_key else None,
            "table": _table(frame, {"alias": "model", "metric": "metric", "quality": quality, "value": "observed",
                                    "predicted": "predicted", "difference": "difference", "ci_low": "CI low",
                                    "ci_high": "CI high", "reference": "reference"}),
            "verdicts": [f"{row['alias']}: {row['verdict']}" for _, row in frame.iterrows()],
        }
    models = wide[["alias", "cell", "series", "axis_name", "axis", "compression"]] if not wide.empty else wide
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE.parent),
                                     autoescape=jinja2.select_autoescape(["html", "j2"]))
    html = environment.get_template(TEMPLATE.name).render(
        title=f"Study: {settings['name']}", generated=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        cells_total=len(study.cells), cells_done=len(study.runs), problems=study.problems,
        models=_table(models, {"alias": "model (alias)", "series": "series", "axis_name": "axis", "axis": "position",
                               "compression": "compression", "cell": "cell"}) if not wide.empty else None,
        resamples=n_resamples, **sections)
    _write_atomic(output / "index.html", html)
    return output / "index.html"


def _control(study: Study, control: dict, n_resamples: int, seed: int, output: Path):
    """(control rows, quality key), or None when the study has no LM-quality metric or no reference pairs."""
    from compfair_tasks.errors import CompfairError

    if study.wide.empty:
        return None
    try:
        quality = quality_key(study, control.get("quality"))
        frame = control_rows(study, control, n_resamples, seed)
    except CompfairError as error:
        study.problems.append(f"quality-matched control: {error}")
        return None
    return frame, quality
