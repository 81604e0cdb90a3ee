"""PNG plots of a leaderboard frame (matplotlib, no display needed).

Every scatter draws an arrow from each teacher to the students compressed from it, so the effect of
compression on both axes is read off the arrow's direction.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from . import columns as C  # noqa: E402

ARROW = dict(arrowstyle="-|>", color="#c2410c", lw=1.4, shrinkA=6, shrinkB=6)


def _points(frame: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    return frame[["model", "teacher", x, y]].dropna(subset=[x, y])


def _wide_range(values: pd.Series) -> bool:
    positive = values[values > 0]
    return len(positive) == len(values) and len(values) > 1 and positive.max() / positive.min() > 20


def scatter(ax, frame: pd.DataFrame, x: C.Column, y: C.Column) -> bool:
    """Models as labelled points, teacher → student arrows; False when fewer than one point."""
    points = _points(frame, x.key, y.key)
    if points.empty:
        ax.set_visible(False)
        return False
    ax.scatter(points[x.key], points[y.key], s=36, color="#1d4ed8", zorder=3)
    for _, row in points.iterrows():
        ax.annotate(row["model"], (row[x.key], row[y.key]), xytext=(4, 4), textcoords="offset points", fontsize=7)
    located = points.set_index("model")
    for _, row in points.iterrows():
        if row["teacher"] in located.index and row["teacher"] != row["model"]:
            teacher = located.loc[row["teacher"]]
            ax.annotate("", xy=(row[x.key], row[y.key]), xytext=(teacher[x.key], teacher[y.key]), arrowprops=ARROW)
    if _wide_range(points[x.key]):
        ax.set_xscale("log")
    ax.margins(0.18)
    if y.better == "50":
        ax.axhline(50, color="#6b7280", lw=0.8, ls="--")
    ax.set_xlabel(x.title)
    ax.set_ylabel(y.title)
    ax.grid(alpha=0.3)
    return True


def _grid(frame: pd.DataFrame, x: C.Column, ys: list[C.Column], title: str, path: Path) -> Path | None:
    ys = [y for y in ys if not _points(frame, x.key, y.key).empty]
    if not ys:
        return None
    cols = min(3, len(ys))
    rows = math.ceil(len(ys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    for ax, y in zip(axes.flat, ys):
        scatter(ax, frame, x, y)
    for ax in list(axes.flat)[len(ys):]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(frame: pd.DataFrame, folder: Path) -> dict[str, Path]:
    """Write the plots that the frame (from `columns.with_headline`) has data for; returns {title: png}."""
    folder.mkdir(parents=True, exist_ok=True)
    frame = frame.assign(params_m=frame["params"] / 1e6)
    headline = C.headline(frame)
    perplexity = next((c for c in headline if c.kind == "perplexity"), None)
    stereoset_ss = [c for c in headline if c.key.startswith("headline:stereoset") and c.key.endswith("_ss")]
    toxicity = [c for c in headline if c.key.startswith("headline:compfair_toxicity")]
    fairness = [c for c in headline if c.kind == "fairness"]
    plots = {}
    if perplexity is not None:
        plots["Perplexity vs StereoSet SS"] = _grid(frame, perplexity, stereoset_ss, "Perplexity vs StereoSet SS",
                                                    folder / "perplexity_vs_stereoset_ss.png")
        plots["Perplexity vs toxicity"] = _grid(frame, perplexity, toxicity, "Perplexity vs toxicity",
                                                folder / "perplexity_vs_toxicity.png")
    params = C.Column("params_m", "Parameters (M)", kind="info")
    plots["Parameters vs fairness"] = _grid(frame, params, fairness, "Parameters vs each fairness metric",
                                            folder / "parameters_vs_fairness.png")
    return {title: path for title, path in plots.items() if path is not None}
