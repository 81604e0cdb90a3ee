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
from .plots import write_plots

TEMPLATES = Path(__file__).resolve().parent / "templates"


def format_value(key: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
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
    text = format_value(key, value)
    low, high, stderr = known(f"{key}_ci_low"), known(f"{key}_ci_high"), known(f"{key}_stderr")
    if text and low is not None and high is not None:
        text += f" [{format_value(key, low)}, {format_value(key, high)}]"
    elif text and stderr is not None:
        text += f" ± {format_value(key, stderr)}"
    numeric = isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value))
    return {"text": text, "sort": repr(float(value)) if numeric else (str(value) if value else ""),
            "numeric": numeric}


def table(frame: pd.DataFrame, columns: list[C.Column]) -> dict:
    rows = [[cell(frame, i, c.key) for c in columns] for i in frame.index]
    if "recipe" in frame.columns:  # the compression settings as the method cell's tooltip
        for i, row in zip(frame.index, rows):
            for c, value in zip(columns, row):
                if c.key == "method":
                    value["title"] = frame.at[i, "recipe"] or ""
    text_columns = [not any(row[j]["numeric"] for row in rows) for j in range(len(columns))]
    return {"columns": [{"key": c.key, "title": c.title, "text": t} for c, t in zip(columns, text_columns)],
            "rows": rows}


def paired_table(paired: pd.DataFrame) -> dict:
    columns = [C.Column(k, k.replace("_", " ")) for k in paired.columns if k not in ("test", "resamples")]
    rows = [[cell(paired, i, c.key) for c in columns] for i in paired.index]
    for i, row in zip(paired.index, rows):  # a p-value below 0.05 is shown in bold
        row[[c.key for c in columns].index("p_value")]["strong"] = paired.at[i, "p_value"] < 0.05
    text_columns = [not any(row[j]["numeric"] for row in rows) for j in range(len(columns))]
    return {"columns": [{"key": c.key, "title": c.title, "text": t} for c, t in zip(columns, text_columns)],
            "rows": rows}


def _markdown_frame(frame: pd.DataFrame, columns: list[C.Column]) -> pd.DataFrame:
    return pd.DataFrame({c.title: [cell(frame, i, c.key)["text"] for i in frame.index] for c in columns})


def to_markdown(frame: pd.DataFrame, paired: pd.DataFrame, problems: list[str], title: str) -> str:
    columns = C.headline(frame)
    align = ["left" if c.key in ("model", "method", "teacher", "scorer") else "right" for c in columns]
    parts = [f"# {title}", "",
             _markdown_frame(frame, columns).to_markdown(index=False, disable_numparse=True, colalign=align)]
    if not paired.empty:
        shown = paired[paired["metric"].isin(C.PAIRED_HEADLINE)].drop(columns=["resamples"])
        parts += ["", "## Paired tests (effect = mean per-doc value of model − baseline)", "",
                  f"Main metrics; all {len(paired)} tests are in paired_tests.csv.", "",
                  shown.to_markdown(index=False, floatfmt=".4g")]
    if problems:
        parts += ["", "## Files skipped or partly read", ""] + [f"- {p}" for p in problems]
    return "\n".join(parts) + "\n"


def _inline_png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def to_html(frame: pd.DataFrame, paired: pd.DataFrame, plots: dict[str, Path], problems: list[str],
            title: str) -> str:
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                                     autoescape=jinja2.select_autoescape(["html", "j2"]))
    return environment.get_template("leaderboard.html.j2").render(
        title=title,
        generated=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        main=table(frame, C.headline(frame)),
        full=table(frame, [C.Column("model", "Model", kind="info")] + C.all_metrics(frame)),
        paired=paired_table(paired[paired["metric"].isin(C.PAIRED_HEADLINE)]) if not paired.empty else None,
        paired_all=paired_table(paired) if not paired.empty else None,
        plots=[{"title": t, "src": _inline_png(p), "file": p.name} for t, p in plots.items()],
        problems=problems,
    )


def write_site(frame: pd.DataFrame, paired: pd.DataFrame, output: Path, problems: list[str] = (),
               title: str = "compfair leaderboard") -> dict[str, Path]:
    """Write leaderboard.csv (the tidy frame), paired_tests.csv, leaderboard.md, index.html and the PNGs."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    problems = list(problems)
    written = {"csv": output / "leaderboard.csv", "paired_csv": output / "paired_tests.csv",
               "markdown": output / "leaderboard.md", "html": output / "index.html"}
    frame.to_csv(written["csv"], index=False)
    paired.to_csv(written["paired_csv"], index=False)
    frame = C.with_headline(frame)
    plots = write_plots(frame, output)
    written["markdown"].write_text(to_markdown(frame, paired, problems, title), encoding="utf-8")
    written["html"].write_text(to_html(frame, paired, plots, problems, title), encoding="utf-8")
    written.update({f"png:{p.stem}": p for p in plots.values()})
    return written
