"""The study report's figures (PNG, matplotlib): one figure per question, names in legends, never on points."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from compfair_tasks.stereoset import DOMAINS  # noqa: E402

from .points import key_label, metric_label  # noqa: E402

COLORS = ["#1d4ed8", "#ea580c", "#059669", "#7c3aed", "#dc2626", "#0891b2", "#ca8a04", "#db2777", "#4b5563"]
SHADES = ["Blues", "Oranges", "Greens", "Purples", "Reds", "GnBu", "YlOrBr", "RdPu", "Greys"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
WIDTH = 12.5  # inches at 100 dpi: fits a 1400 px page
def compression_styles(points: pd.DataFrame) -> dict[str, int]:
    """compression label -> its colour index, uncompressed first, in order of appearance."""
    labels = list(dict.fromkeys(points.sort_values("method", key=lambda m: m != "none", kind="stable")["compression"]))
    return {label: i % len(COLORS) for i, label in enumerate(labels)}


def _panels(n: int, height: float = 3.6):
    columns = min(n, 3)
    rows = math.ceil(n / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(WIDTH, height * rows + 0.8), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return figure, list(axes.flat[:n])


def _axis_scale(ax, values) -> None:
    values = np.asarray([v for v in values if isinstance(v, (int, float)) and math.isfinite(v)], dtype=float)
    if len(values) > 1 and values.min() > 0 and values.max() / values.min() > 20:
        ax.set_xscale("log")


def _save(figure, path: Path, legend_handles=None, legend_title=None) -> Path:
    if legend_handles:
        figure.legend(handles=legend_handles, title=legend_title, loc="outside lower center",
                      ncols=min(len(legend_handles), 6), frameon=False, fontsize=10)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def metric_along_axis(points: pd.DataFrame, task: str, metric: str, path: Path) -> Path | None:
    """The metric against each series' axis: one panel per series, one line per compression, CI as a band."""
    chosen = points[(points["task"] == task) & (points["metric"] == metric)]
    if chosen.empty:
        return None
    styles = compression_styles(points)
    series = list(dict.fromkeys(chosen["series"]))
    label = metric_label(metric) + (" (50 = unbiased)" if metric.startswith("ss") else "")
    figure, axes = _panels(len(series))
    figure.set_layout_engine("constrained")
    handles = {}
    for ax, name in zip(axes, series):
        one = chosen[chosen["series"] == name]
        for compression, line in one.groupby("compression", sort=False):
            line = line.sort_values("axis")
            color = COLORS[styles[compression]]
            (handle,) = ax.plot(line["axis"], line["value"], marker="o", ms=4, color=color, label=compression)
            if line["ci_low"].notna().any():
                ax.fill_between(line["axis"], line["ci_low"], line["ci_high"], color=color, alpha=0.15, lw=0)
            handles.setdefault(compression, handle)
        _axis_scale(ax, one["axis"])
        if "perplexity" in metric and (one["value"] > 0).all():
            ax.set_yscale("log")  # perplexities of weak models span orders of magnitude
        if metric.startswith("ss"):
            ax.axhline(50, color="#6b7280", lw=0.8, ls="--")
        ax.set_title(name, fontsize=11)
        ax.set_xlabel(str(one["axis_name"].iloc[0]))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    figure.suptitle(f"{key_label(f'{task}:{metric}')} along each series", fontsize=12)
    return _save(figure, path, list(handles.values()), "compression (band: 95% CI)")


def lms_against_ss(wide: pd.DataFrame, task: str, path: Path) -> Path | None:
    """StereoSet LM score (x) against SS (y) per domain; colour = compression, darker = later on the axis,
    marker = series."""
    domains = [d for d in DOMAINS if f"{task}:lms_{d}" in wide and f"{task}:ss_{d}" in wide]
    if not domains:
        return None
    styles = compression_styles(wide)
    series = list(dict.fromkeys(wide["series"]))
    figure, axes = plt.subplots(1, len(domains), figsize=(WIDTH, 4.4), squeeze=False, layout="constrained")
    for ax, domain in zip(axes[0], domains):
        for (name, compression), group in wide.groupby(["series", "compression"], sort=False):
            ranks = group["axis"].rank(method="dense").to_numpy()
            shade = 0.35 + 0.65 * (ranks - 1) / max(ranks.max() - 1, 1)
            colors = plt.get_cmap(SHADES[styles[compression]])(shade)
            ax.scatter(group[f"{task}:lms_{domain}"], group[f"{task}:ss_{domain}"], c=colors, s=30,
                       marker=MARKERS[series.index(name) % len(MARKERS)], edgecolors="#111827", linewidths=0.3)
        ax.axhline(50, color="#6b7280", lw=0.8, ls="--")
        ax.set_title(domain, fontsize=11)
        ax.set_xlabel("LM score ↑")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("SS (50 = unbiased)")
    handles = [plt.Line2D([], [], ls="", marker="o", color=plt.get_cmap(SHADES[i])(0.8), label=label)
               for label, i in styles.items()]
    if len(series) > 1:
        handles += [plt.Line2D([], [], ls="", marker=MARKERS[i % len(MARKERS)], color="#374151", label=name)
                    for i, name in enumerate(series)]
    figure.suptitle(f"LM score against stereotype score per domain ({task}); darker = later checkpoint / larger",
                    fontsize=12)
    return _save(figure, path, handles, "compression" + (" and series" if len(series) > 1 else ""))


def control_scatter(wide: pd.DataFrame, control: pd.DataFrame, key: str, quality: str, path: Path) -> Path | None:
    """Quality (x) against the metric (y): each reference as a line, compressed models as points (colour =
    compression, marker = series; x = outside the reference's quality range)."""
    rows = control[control["task"] + ":" + control["metric"] == key]
    if rows.empty:
        return None
    styles = compression_styles(wide)
    series = list(dict.fromkeys(wide["series"]))
    figure, ax = plt.subplots(figsize=(WIDTH * 0.75, 5.6), layout="constrained")
    handles = []
    for i, (reference, group) in enumerate(rows.groupby("reference", sort=False)):
        ref = _reference_cells(wide, group).sort_values(quality)
        (handle,) = ax.plot(ref[quality], ref[key], color=["#111827", "#6b7280", "#9ca3af"][i % 3], lw=1.4,
                            marker=MARKERS[series.index(group["series"].iloc[0]) % len(MARKERS)], ms=4,
                            label=f"reference: {reference}")
        handles.append(handle)
    for _, row in rows.iterrows():
        ax.scatter(row["quality"], row["value"], color=COLORS[styles.get(row["compression"], 0)], s=50, zorder=3,
                   marker=MARKERS[series.index(row["series"]) % len(MARKERS)] if math.isfinite(row["predicted"])
                   else "x")
    handles += [plt.Line2D([], [], ls="", marker="o", color=COLORS[styles[label]], label=label)
                for label in dict.fromkeys(rows["compression"])]
    ax.set_xlabel(key_label(quality) + ("  (lower is better)" if "perplexity" in quality else "  (higher is better)"))
    ax.set_ylabel(key_label(key))
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=9, loc="best")
    return _save(figure, path)


def _reference_cells(wide: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    return wide[wide["cell"].isin({c for cells in rows["reference_cells"] for c in cells.split()})]


def control_forest(control: pd.DataFrame, key: str, path: Path) -> Path | None:
    """Each compressed model's difference from the reference's prediction, with its 95% CI."""
    rows = control[(control["task"] + ":" + control["metric"] == key)].reset_index(drop=True)
    if rows.empty:
        return None
    figure, ax = plt.subplots(figsize=(WIDTH * 0.75, 1.4 + 0.38 * len(rows)), layout="constrained")
    y = np.arange(len(rows))[::-1]
    inside = rows["predicted"].map(math.isfinite).to_numpy()
    ax.errorbar(rows.loc[inside, "difference"], y[inside],
                xerr=[(rows["difference"] - rows["ci_low"])[inside].fillna(0),
                      (rows["ci_high"] - rows["difference"])[inside].fillna(0)],
                fmt="o", color="#1d4ed8", capsize=3)
    for yy in y[~inside]:
        ax.annotate("outside the reference's quality range", (0, yy), ha="center", va="center", fontsize=9,
                    color="#6b7280")
    ax.axvline(0, color="#6b7280", lw=0.8, ls="--")
    ax.set_yticks(y, rows["alias"])
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel(f"{key_label(key)}: observed − predicted at the same LM quality (95% CI)")
    ax.grid(alpha=0.3, axis="x")
    return _save(figure, path)
