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
import numpy as np
import pandas as pd

from compfair_tasks import stats

from . import figures, trends
from .control import FAIRNESS, Resampler, control_rows, quality_key, reference_parts
from .plan import STUDY
from .points import Study

TEMPLATE = Path(__file__).resolve().parent.parent / "templates" / "study.html.j2"
PLOTTED = ("lms", "icat", "word_perplexity", "ss", *FAIRNESS)
QUALITY_BESIDE = ("perplexity", "lms")  # control.quality_key names


def study_settings(folder: Path) -> dict:
    """{"name", "control"} from study.json (written by `compfair study run`); defaults when absent."""
    path = folder / STUDY
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
    resampler = Resampler(study, n_resamples, seed)
    points = with_bootstrap_cis(points_with_quality(study), resampler, _plotted(study.points))
    _write_atomic(output / "points.csv", points.to_csv(index=False))
    wide = study.wide
    sections = {"along": [], "stereoset": [], "control": None}
    for task, metric in _plotted(points):
        path = figures.metric_along_axis(points, task, metric, output / f"along_{task}_{metric}.png")
        if path:
            sections["along"].append({"title": figures.key_label(f"{task}:{metric}"), "src": _inline(path)})
    tau_frames, best_frames = [], []
    for task in trends.stereoset_tasks(wide):
        tau, best = trends.tau_table(wide, task), trends.best_checkpoints(wide, task)
        tau_frames.append(tau)
        best_frames.append(best.assign(task=task))
        sections["stereoset"].append({
            "task": task, "figure": _inline(figures.lms_against_ss(wide, task, output / f"lms_ss_{task}.png")),
            "tau": tau_summary(tau),
            "best": _table(best, {"series": "series", "compression": "compression", "axis": "best at",
                                  "lms": "LM score", "ss": "SS", **{f"ss_{d}": f"SS {d}" for d in trends.DOMAINS},
                                  "members": "checkpoints"})})
    _write_atomic(output / "trends.csv", pd.concat(tau_frames).to_csv(index=False) if tau_frames else "")
    _write_atomic(output / "best.csv", pd.concat(best_frames).to_csv(index=False) if best_frames else "")
    control = _control(study, settings["control"], resampler)
    if control is not None:
        frame, quality = control
        _write_atomic(output / "control.csv", frame.to_csv(index=False))
        keys = list(dict.fromkeys(frame["task"] + ":" + frame["metric"]))
        main_key = next((k for k in keys if k.endswith(":ss")), keys[0] if keys else None)
        sections["control"] = {
            "quality": figures.key_label(quality), "main": figures.key_label(main_key) if main_key else None,
            "reference": _reference_words(settings["control"].get("reference")),
            "scatter": _inline(figures.control_scatter(wide, frame, main_key, quality, output / "control.png"))
            if main_key else None,
            "forest": _inline(figures.control_forest(frame, main_key, output / "control_difference.png"))
            if main_key else None,
            "table": control_summary(frame, quality), "verdicts": control_verdicts(frame, main_key),
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


def _control(study: Study, control: dict, resampler: Resampler):
    """(control rows, quality key), or None when the study has no LM-quality metric or no reference pairs."""
    from compfair_tasks.errors import CompfairError

    if study.wide.empty:
        return None
    try:
        quality = quality_key(study, control.get("quality"))
        frame = control_rows(study, control, resampler=resampler)
    except CompfairError as error:
        study.problems.append(f"quality-matched control: {error}")
        return None
    return frame, quality


def _reference_words(reference) -> str:
    series, compression = reference_parts(reference)  # every form the spec takes (string or mapping)
    if not compression or compression == "none":
        return f"the {series} uncompressed models" if series else "each series' uncompressed models"
    if series:
        return f"the {series} / {compression} models"
    return f"each member's uncompressed model and its {compression} variants"


def with_bootstrap_cis(points: pd.DataFrame, resampler: Resampler, keys: list[tuple[str, str]]) -> pd.DataFrame:
    """Fill the CI of the plotted metrics lm-eval gave none for (per-domain SS, perplexity) with the percentile
    bootstrap over the cell's documents (`ci_kind` "bootstrap (report)"); others stay as lm-eval reported."""
    points = points.copy()
    wanted = points[["task", "metric"]].apply(tuple, axis=1).isin(set(keys)) & points["ci_low"].isna()
    for index in points.index[wanted]:
        row = points.loc[index]
        values = resampler.values(row["cell"], f"{row['task']}:{row['metric']}", row["value"])
        if values is not None and np.isfinite(values).any():
            points.loc[index, ["ci_low", "ci_high"]] = np.nanpercentile(values, [2.5, 97.5])
            points.loc[index, "ci_kind"] = "bootstrap (report)"
    return points


def tau_summary(tau: pd.DataFrame) -> dict:
    """Domains as rows, the model sets as columns: "τc (one-sided p, n)"."""
    models = list(dict.fromkeys(tau["models"]))
    rows = []
    for domain, group in tau.groupby("domain", sort=False):
        by = group.set_index("models")
        rows.append([domain] + [f"{by.at[m, 'tau_c']:+.3f} (p {by.at[m, 'p_one_sided']:.3f}, n {by.at[m, 'n']})"
                                if math.isfinite(by.at[m, "tau_c"]) else f"— (n {by.at[m, 'n']})" for m in models])
    return {"header": ["domain", *models], "rows": rows}


def _difference_text(row) -> str:
    if not math.isfinite(row["predicted"]):
        return "outside range"
    if not math.isfinite(row["ci_low"]):
        return f"{row['difference']:+.2f}"
    beyond = row["ci_low"] > 0 or row["ci_high"] < 0
    return f"{row['difference']:+.2f} [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]" + (" ◆" if beyond else "")


def control_summary(frame: pd.DataFrame, quality: str) -> dict:
    """One row per compressed model: its quality, then each metric's difference from the prediction [95% CI]."""
    metrics = list(dict.fromkeys(frame["task"] + ":" + frame["metric"]))
    rows = []
    for _, group in frame.groupby("cell", sort=False):
        by = group.assign(key=group["task"] + ":" + group["metric"]).set_index("key")
        first = group.iloc[0]
        rows.append([first["alias"], f"{first['quality']:.2f}",
                     f"{first['reference_low']:.2f} – {first['reference_high']:.2f}"]
                    + [_difference_text(by.loc[k]) if k in by.index else "" for k in metrics])
    tasks = {k.split(":")[0] for k in [quality, *metrics]}
    name = figures.metric_label if len(tasks) == 1 else figures.key_label  # one task: named in the section text
    return {"header": ["model", name(quality.split(":")[-1] if len(tasks) == 1 else quality), "reference range",
                       *[name(k.split(":")[-1] if len(tasks) == 1 else k) for k in metrics]], "rows": rows}


def control_verdicts(frame: pd.DataFrame, main_key: str | None) -> list[str]:
    """One sentence per compressed model: the main metric's verdict, then any other metric beyond its quality."""
    sentences = []
    for _, group in frame.groupby("cell", sort=False):
        keys = group["task"] + ":" + group["metric"]
        main = group[keys == main_key].iloc[0] if (keys == main_key).any() else group.iloc[0]
        sentence = f"{main['alias']}: {main['verdict']}."
        beyond = group[(group["ci_low"] > 0) | (group["ci_high"] < 0)]
        beyond = beyond[beyond.index != main.name]
        if not beyond.empty:
            sentence += " Also beyond its loss of quality: " + "; ".join(
                f"{figures.metric_label(r['metric'])} {_difference_text(r)}" for _, r in beyond.iterrows()) + "."
        sentences.append(sentence)
    return sentences
