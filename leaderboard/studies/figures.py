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

COLORS = ["#1d4ed8", "#ea580c", "#059669", "#7c3aed", "#dc2626", "#0891b2", "#ca8a04", "#db2777", "#4b5563"]
SHADES = ["Blues", "Oranges", "Greens", "Purples", "Reds", "GnBu", "YlOrBr", "RdPu", "Greys"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
WIDTH = 12.5  # inches at 100 dpi: fits a 1400 px page


def compression_styles(points: pd.DataFrame) -> dict[str, int]:
    """compression label -> its colour index, uncompressed first, in order of appearance."""
    labels = list(dict.fromkeys(points.sort_values("method", key=lambda m: m != "none")["compression"]))
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


def metric_along_axis(points: pd.DataFrame, task: str, metric: str, label: str, path: Path) -> Path | None:
    """The metric against each series' axis: one panel per series, one line per compression, CI as a band."""
    chosen = points[(points["task"] == task) & (points["metric"] == metric)]
    if chosen.empty:
        return None
    styles = compression_styles(points)
    series = list(dict.fromkeys(chosen["series"]))
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
        if metric.startswith("ss"):
            ax.axhline(50, color="#6b7280", lw=0.8, ls="--")
        ax.set_title(name, fontsize=11)
        ax.set_xlabel(str(one["axis_name"].iloc[0]))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    figure.suptitle(f"{label} along each series ({task})", fontsize=12)
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
    """Quality (x) against the metric (y): reference series as lines, compressed models as points."""
    rows = control[control["task"] + ":" + control["metric"] == key]
    if rows.empty:
        return None
    styles = compression_styles(wide)
    figure, ax = plt.subplots(figsize=(WIDTH * 0.7, 5.2), layout="constrained")
    handles = {}
    for reference, group in rows.groupby("reference", sort=False):
        ref = _reference_cells(wide, group)
        ref = ref.sort_values(quality)
        (handle,) = ax.plot(ref[quality], ref[key], color="#111827", lw=1.2, marker=".", label=f"{reference}")
        handles.setdefault(f"reference: {reference}", handle)
    for _, row in rows.iterrows():
        color = COLORS[styles.get(row["compression"], 0)]
        handle = ax.scatter(row["quality"], row["value"], color=color, s=40, zorder=3,
                            marker="o" if math.isfinite(row["predicted"]) else "x")
        handles.setdefault(row["compression"], handle)
    for label, handle in handles.items():
        handle.set_label(label)
    ax.set_xlabel(quality + ("  (lower is better)" if "perplexity" in quality else "  (higher is better)"))
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
    ax.set_title(f"Quality-matched control: {key} against {quality} (x = outside the reference's range)",
                 fontsize=11)
    ax.legend(handles=list(handles.values()), fontsize=9, loc="best")
    return _save(figure, path)


def _reference_cells(wide: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    return wide[wide["cell"].isin({c for cells in rows["reference_cells"] for c in cells.split()})]


def control_forest(control: pd.DataFrame, key: str, path: Path) -> Path | None:
    """Each compressed model's difference from the reference's prediction, with its 95% CI."""
    rows = control[(control["task"] + ":" + control["metric"] == key)].reset_index(drop=True)
    if rows.empty:
        return None
    figure, ax = plt.subplots(figsize=(WIDTH * 0.7, 1.2 + 0.38 * len(rows)), layout="constrained")
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
    ax.set_xlabel(f"{key}: observed − predicted at the same quality (95% CI)")
    ax.grid(alpha=0.3, axis="x")
    return _save(figure, path)
