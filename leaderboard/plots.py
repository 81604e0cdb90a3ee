"""PNG plots of a leaderboard frame (matplotlib, no display needed).

Every scatter draws an arrow from each teacher to the students compressed from it, so the effect of
compression on both axes is read off the arrow's direction. Each model keeps one colour and marker in every
panel and is named once, in the figure's legend (names on the points overlapped); a model with the
degeneration flag is ringed in red.
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
    flagged = frame["degenerate"].fillna(False).astype(bool) if "degenerate" in frame.columns else False
    return frame[["model", "teacher", x, y]].assign(flagged=flagged).dropna(subset=[x, y])


def _wide_range(values: pd.Series) -> bool:
    positive = values[values > 0]
    return len(positive) == len(values) and len(values) > 1 and positive.max() / positive.min() > 20


COLORS = plt.get_cmap("tab10").colors
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def model_styles(frame: pd.DataFrame) -> dict[str, dict]:
    """model -> its colour and marker in every panel (teachers next to their students), so a legend names it once."""
    return {model: {"color": COLORS[i % len(COLORS)], "marker": MARKERS[i // len(COLORS) % len(MARKERS)]}
            for i, model in enumerate(family_order(frame))}


def scatter(ax, frame: pd.DataFrame, x: C.Column, y: C.Column, styles: dict[str, dict] | None = None) -> bool:
    """Models as points in their legend style (no names on the points: they overlap), teacher → student arrows,
    a degenerate model ringed in red; False when there is no point."""
    points = _points(frame, x.key, y.key)
    if points.empty:
        ax.set_visible(False)
        return False
    styles = styles or model_styles(frame)
    for _, row in points.iterrows():
        ax.scatter(row[x.key], row[y.key], s=70 if row["flagged"] else 46, zorder=3, **styles[row["model"]],
                   edgecolors="#dc2626" if row["flagged"] else "#111827", linewidths=2.0 if row["flagged"] else 0.4)
    located = points.set_index("model")
    for _, row in points.iterrows():
        if row["teacher"] in located.index and row["teacher"] != row["model"]:
            teacher = located.loc[row["teacher"]]
            ax.annotate("", xy=(row[x.key], row[y.key]), xytext=(teacher[x.key], teacher[y.key]), arrowprops=ARROW)
    if _wide_range(points[x.key]):
        ax.set_xscale("log")
    ax.margins(0.12)
    if y.better == "50":
        ax.axhline(50, color="#6b7280", lw=0.8, ls="--")
    ax.set_xlabel(x.title)
    ax.set_ylabel(y.title)
    ax.grid(alpha=0.3)
    return True


def _legend_handles(frame: pd.DataFrame, styles: dict[str, dict], shown: set[str]) -> list:
    flagged = set(frame.loc[frame["degenerate"].fillna(False).astype(bool), "model"]) \
        if "degenerate" in frame.columns else set()
    return [plt.Line2D([], [], ls="", ms=8, markeredgecolor="#dc2626" if model in flagged else "#111827",
                       markeredgewidth=2.0 if model in flagged else 0.4, **styles[model],
                       label=f"{model} (degenerate?)" if model in flagged else model)
            for model in styles if model in shown]


def _grid(frame: pd.DataFrame, panels: list[tuple[C.Column, C.Column]], title: str, path: Path) -> Path | None:
    """One scatter per (x, y) panel that has data, two panels a row, the models named once in a legend below;
    None when no panel has data."""
    panels = [(x, y) for x, y in panels if not _points(frame, x.key, y.key).empty]
    if not panels:
        return None
    cols = min(2, len(panels))
    rows = math.ceil(len(panels) / cols)
    styles = model_styles(frame)
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.2 * rows + 1.0), squeeze=False, layout="constrained")
    shown = set()
    for ax, (x, y) in zip(axes.flat, panels):
        scatter(ax, frame, x, y, styles)
        shown |= set(_points(frame, x.key, y.key)["model"])
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title + ("  (arrow: teacher → compressed model)" if frame["teacher"].notna().any() else ""))
    fig.legend(handles=_legend_handles(frame, styles, shown), loc="outside lower center", ncols=3, frameon=False,
               fontsize=9)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def fluency_panels(frame: pd.DataFrame, headline: list[C.Column]) -> list[tuple[C.Column, C.Column]]:
    """(fluency, toxicity) per toxicity task: the task's fluency PPL, else the BOLD-wiki perplexity (labelled so)."""
    by_key = {c.key: c for c in headline}
    fallback = by_key.get("headline:bold_wiki_ppl")
    panels = []
    for column in headline:
        if not (column.key.startswith("headline:compfair_toxicity") and column.key.endswith("_emt")):
            continue
        fluency = by_key.get(column.key.removesuffix("_emt") + "_fluency_ppl")
        if fluency is None and fallback is not None:
            fluency = C.Column(fallback.key, f"{fallback.label} (no fluency PPL logged)", fallback.better)
        if fluency is not None:
            panels.append((fluency, column))
    return panels


def family_order(frame: pd.DataFrame) -> list[str]:
    """Model names with each teacher followed by its students (then every other model)."""
    names = list(frame["model"])
    teachers = dict(zip(frame["model"], frame["teacher"].fillna("")))
    order = []
    for name in names:
        if teachers.get(name) in names:
            continue  # placed after its teacher
        order.append(name)
        order += [s for s in names if teachers.get(s) == name and s != name]
    return order + [n for n in names if n not in order]


def bold_group_columns(frame: pd.DataFrame, domain: str, metric: str) -> dict[str, str]:
    """group -> column `compfair_bold_<domain>:<metric>_<group>` (not the gap, ratio, CI or stderr columns)."""
    prefix = f"compfair_bold_{domain}:{metric}_"
    found = {}
    for key in frame.columns:
        if not key.startswith(prefix) or key.endswith(("_stderr", "_ci_low", "_ci_high")):
            continue
        group = key[len(prefix):]
        if group.startswith(("gap", "ratio")) or not frame[key].notna().any():
            continue
        found[group] = key
    return dict(sorted(found.items()))


def bold_groups_plot(frame: pd.DataFrame, path: Path) -> Path | None:
    """One panel per BOLD domain and measure: each group's mean, bars of a teacher beside its students."""
    panels = [(d, m, bold_group_columns(frame, d, m)) for d in C.BOLD_DOMAINS for m in ("tox_mean", "sent_mean")]
    panels = [p for p in panels if p[2]]
    if not panels:
        return None
    models = [m for m in family_order(frame) if any(frame.loc[frame["model"] == m, k].notna().any()
                                                    for _, _, groups in panels for k in groups.values())]
    heights = [max(1.6, 0.28 * len(groups) * max(1, len(models)) / 2 + 0.8) for _, _, groups in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7.5, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    rows = frame.set_index("model")
    width = 0.8 / max(1, len(models))
    colors = plt.get_cmap("tab10")
    for ax, (domain, metric, groups) in zip(axes[:, 0], panels):
        positions = range(len(groups))
        for i, model in enumerate(models):
            values = [rows.at[model, key] for key in groups.values()]
            ax.barh([p + i * width for p in positions], values, height=width, color=colors(i % 10), label=model)
        ax.set_yticks([p + width * (len(models) - 1) / 2 for p in positions], list(groups), fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"BOLD {C.BOLD_DOMAINS[domain]}: {'toxicity' if metric == 'tox_mean' else 'VADER sentiment'}",
                     fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[0, 0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_plots(frame: pd.DataFrame, folder: Path) -> dict[str, Path]:
    """Write the plots that the frame (from `columns.with_headline`) has data for; returns {title: png}."""
    folder.mkdir(parents=True, exist_ok=True)
    frame = frame.assign(params_m=frame["params"] / 1e6)
    headline = C.headline(frame)
    perplexity = next((c for c in headline if c.kind == "perplexity"), None)
    stereoset_ss = [c for c in headline if c.key.startswith("headline:stereoset") and c.key.endswith("_ss")]
    fairness = [c for c in headline if c.kind == "fairness"]
    plots = {}
    if perplexity is not None:
        plots["Perplexity vs StereoSet SS"] = _grid(frame, [(perplexity, y) for y in stereoset_ss],
                                                    "Perplexity vs StereoSet SS", folder / "perplexity_vs_stereoset_ss.png")
    plots["Toxicity vs fluency"] = _grid(frame, fluency_panels(frame, headline),
                                         "Toxicity vs fluency (a degenerate model is not toxic)",
                                         folder / "toxicity_vs_fluency.png")
    params = C.Column("params_m", "Parameters (M)", kind="info")
    plots["Parameters vs fairness"] = _grid(frame, [(params, y) for y in fairness],
                                            "Parameters vs each fairness metric", folder / "parameters_vs_fairness.png")
    plots["BOLD group scores"] = bold_groups_plot(frame, folder / "bold_groups.png")
    return {title: path for title, path in plots.items() if path is not None}
