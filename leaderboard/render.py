"""A leaderboard site: CSV, Markdown, one static HTML page (plots inlined, sortable table) and PNGs.

The page needs no network: CSS, the sorting script and the plots (base64) are inside the file, so it
works when opened from file:// or mailed around; the PNGs are also written next to it.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
from pathlib import Path

import jinja2
import pandas as pd

from . import columns as C
from . import sitedir
from .degeneration import DEFAULTS, NOT_COMPARABLE, Thresholds, flag_models, mark
from .plots import write_plots

TEMPLATES = Path(__file__).resolve().parent / "templates"


def format_value(key: str, value) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if key == "degenerate":
        return "FLAGGED" if value else "no"
    if not isinstance(value, (int, float)):
        return str(value)
    if value == 0:
        return "0"
    if key == "limit":
        return f"{value:g}"
    if key == "params":
        return f"{value / 1e6:,.1f}"
    if key == "size_bytes":
        return f"{value / 2**20:,.1f}"
    if isinstance(value, int):  # a count (a paired test's n)
        return f"{value:,}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}" if abs(value) >= 0.001 else f"{value:.2e}"


def cell(frame: pd.DataFrame, index: int, key: str) -> dict:
    """Display text (value, then its 95% CI or ± stderr when known) and the raw value the table sorts by."""

    def known(column):
        found = frame.at[index, column] if column in frame.columns else None
        return found if isinstance(found, (int, float)) and not math.isnan(found) else None

    value = frame.at[index, key] if key in frame.columns else None
    if value is pd.NA:
        value = None
    elif hasattr(value, "item") and not isinstance(value, str):  # numpy scalars (counts) sort as numbers
        value = value.item()
    text = format_value(key, value)
    low, high, stderr = known(f"{key}_ci_low"), known(f"{key}_ci_high"), known(f"{key}_stderr")
    if text and low is not None and high is not None:
        text += f" [{format_value(key, low)}, {format_value(key, high)}]"
    elif text and stderr is not None:
        text += f" ± {format_value(key, stderr)}"
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool) and not (
        isinstance(value, float) and math.isnan(value))
    return {"text": text, "sort": repr(float(value)) if numeric else (str(value) if value else ""),
            "numeric": numeric}


def table(frame: pd.DataFrame, columns: list[C.Column]) -> dict:
    rows = [[cell(frame, i, c.key) for c in columns] for i in frame.index]
    tooltips = {"method": "recipe", "degenerate": "degeneration"}  # a cell's details as its tooltip
    for i, row in zip(frame.index, rows):
        for c, value in zip(columns, row):
            if c.key in tooltips and tooltips[c.key] in frame.columns:
                value["title"] = frame.at[i, tooltips[c.key]] or ""
                value["strong"] = c.key == "degenerate" and frame.at[i, c.key] is not pd.NA and bool(frame.at[i, c.key])
    text_columns = [not any(row[j]["numeric"] for row in rows) for j in range(len(columns))]
    return {"columns": [{"key": c.key, "title": c.title, "text": t} for c, t in zip(columns, text_columns)],
            "rows": rows}


def paired_table(paired: pd.DataFrame) -> dict:
    """Paired tests or flip rates; a p-value below 0.05 is bold unless the pair is not comparable."""
    hidden = ("test", "resamples") + tuple(k for k in paired.columns if k.endswith(("_ci_low", "_ci_high")))
    columns = [C.Column(k, k.replace("_", " ")) for k in paired.columns if k not in hidden]
    rows = [[cell(paired, i, c.key) for c in columns] for i in paired.index]
    if "p_value" in paired.columns:
        at = [c.key for c in columns].index("p_value")
        for i, row in zip(paired.index, rows):
            row[at]["strong"] = paired.at[i, "p_value"] < 0.05 and not paired.at[i, "note"]
    text_columns = [not any(row[j]["numeric"] for row in rows) for j in range(len(columns))]
    return {"columns": [{"key": c.key, "title": c.title, "text": t} for c, t in zip(columns, text_columns)],
            "rows": rows}


def _markdown_frame(frame: pd.DataFrame, columns: list[C.Column]) -> pd.DataFrame:
    return pd.DataFrame({c.title: [cell(frame, i, c.key)["text"] for i in frame.index] for c in columns})


def _paired_markdown(paired: pd.DataFrame) -> str:
    shown = paired.drop(columns=[c for c in ("resamples",) if c in paired.columns])
    return shown.to_markdown(index=False, floatfmt=".4g")


def to_markdown(frame: pd.DataFrame, paired: pd.DataFrame, flips: pd.DataFrame, problems: list[str], title: str,
                limits: Thresholds) -> str:
    columns = C.headline(frame)
    align = ["left" if c.key in ("model", "method", "teacher", "scorer") else "right" for c in columns]
    parts = [f"# {title}", "",
             _markdown_frame(frame, columns).to_markdown(index=False, disable_numparse=True, colalign=align)]
    flagged = frame[frame["degenerate"].fillna(False).astype(bool)] if "degenerate" in frame.columns else frame[:0]
    parts += ["", f"Degeneration flag (against the teacher): {limits.describe()}."]
    parts += [f"- **{row['model']}**: {row['degeneration']}" for _, row in flagged.iterrows()]
    if not paired.empty:
        shown = paired[paired["metric"].isin(C.PAIRED_HEADLINE)]
        parts += ["", "## Paired tests (effect = mean per-doc value of model − baseline)", "",
                  (f"Main metrics; all {len(paired)} tests are in paired_tests.csv. "
                   f"\"{NOT_COMPARABLE}\": the model is flagged next to that baseline."), "", _paired_markdown(shown)]
    if not flips.empty:
        parts += ["", "## Flip rates (share of items whose preferred sentence changed; 95% Wilson CI)", "",
                  flips.to_markdown(index=False, floatfmt=".3g")]
    if problems:
        parts += ["", "## Problems: files skipped or partly read, checkpoints or teachers not found", ""] + [f"- {p}" for p in problems]
    return "\n".join(parts) + "\n"


def _inline_png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def to_html(frame: pd.DataFrame, paired: pd.DataFrame, flips: pd.DataFrame, plots: dict[str, Path],
            problems: list[str], title: str, limits: Thresholds) -> str:
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                                     autoescape=jinja2.select_autoescape(["html", "j2"]))
    flagged = frame[frame["degenerate"].fillna(False).astype(bool)] if "degenerate" in frame.columns else frame[:0]
    return environment.get_template("leaderboard.html.j2").render(
        title=title,
        generated=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        main=table(frame, C.headline(frame)),
        full=table(frame, [C.Column("model", "Model", kind="info")] + C.all_metrics(frame)),
        paired=paired_table(paired[paired["metric"].isin(C.PAIRED_HEADLINE)]) if not paired.empty else None,
        paired_all=paired_table(paired) if not paired.empty else None,
        flips=paired_table(flips) if not flips.empty else None,
        thresholds=limits.describe(),
        flagged=[{"model": row["model"], "reasons": row["degeneration"]} for _, row in flagged.iterrows()],
        not_comparable=NOT_COMPARABLE,
        plots=[{"title": t, "src": _inline_png(p), "file": p.name} for t, p in plots.items()],
        problems=problems,
    )


def write_files(folder: Path, frame: pd.DataFrame, paired: pd.DataFrame, flips: pd.DataFrame | None = None,
                problems: list[str] = (), title: str = "compfair leaderboard",
                limits: Thresholds = DEFAULTS) -> dict[str, Path]:
    """Write leaderboard.csv (the tidy frame plus the degeneration flag), paired_tests.csv, flip_rates.csv,
    leaderboard.md, index.html and the PNGs into `folder` (see `write_site` for the safe way)."""
    folder = Path(folder)
    problems = list(problems)
    flips = flip_columns_frame() if flips is None else flips
    wide = C.with_headline(frame)
    flags = flag_models(wide, limits)
    flags["degeneration_thresholds"] = [limits.describe() if f is not pd.NA else "" for f in flags["degenerate"]]
    frame = pd.concat([frame, flags], axis=1)
    wide = pd.concat([wide, flags], axis=1)
    paired, flips = mark(paired, wide, limits), mark(flips, wide, limits)
    written = {"csv": folder / "leaderboard.csv", "paired_csv": folder / "paired_tests.csv",
               "flips_csv": folder / "flip_rates.csv", "markdown": folder / "leaderboard.md",
               "html": folder / "index.html"}
    frame.to_csv(written["csv"], index=False)
    paired.to_csv(written["paired_csv"], index=False)
    flips.to_csv(written["flips_csv"], index=False)
    plots = write_plots(wide, folder)
    written["markdown"].write_text(to_markdown(wide, paired, flips, problems, title, limits), encoding="utf-8")
    written["html"].write_text(to_html(wide, paired, flips, plots, problems, title, limits), encoding="utf-8")
    written.update({f"png:{p.stem}": p for p in plots.values()})
    return written


def flip_columns_frame() -> pd.DataFrame:
    from .flips import COLUMNS

    return pd.DataFrame(columns=COLUMNS)


def write_site(frame: pd.DataFrame, paired: pd.DataFrame, output: Path, problems: list[str] = (),
               title: str = "compfair leaderboard", flips: pd.DataFrame | None = None,
               limits: Thresholds = DEFAULTS) -> dict[str, Path]:
    """`write_files` into a fresh folder swapped in for `output` (under its lock): a failed or killed build
    leaves the previous site as it was."""
    output = Path(output)
    with sitedir.publish(output) as staged:
        written = write_files(staged, frame, paired, flips, problems, title, limits)
    return {kind: output / path.name for kind, path in written.items()}
