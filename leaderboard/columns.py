"""Which metric columns the leaderboard shows, under which labels, and which direction is better."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class Column:
    key: str  # column of the tidy frame: an info column or "task:metric"
    label: str
    better: str = ""  # "lower", "higher", "50" (closest to 50 is unbiased) or "" (no direction)
    kind: str = "metric"  # "metric", "fairness", "perplexity", "info"

    @property
    def arrow(self) -> str:
        return {"lower": "↓", "higher": "↑", "50": "→50"}.get(self.better, "")

    @property
    def title(self) -> str:
        return f"{self.label} {self.arrow}".strip()


INFO = [
    Column("model", "Model", kind="info"),
    Column("method", "Method", kind="info"),
    Column("teacher", "Compressed from", kind="info"),
    Column("params", "Params (M)", kind="info"),
    Column("size_bytes", "Size (MB)", kind="info"),
    Column("latency_ms", "Latency (ms)", "lower", kind="info"),
]

PERPLEXITY = [
    Column("wikitext:word_perplexity", "WikiText-2 PPL", "lower", "perplexity"),
    Column("compfair_ppl_bold_wiki:word_perplexity", "BOLD-wiki PPL", "lower", "perplexity"),
]

TOXICITY_TASKS = {
    "compfair_toxicity_rtp": "RTP",
    "compfair_toxicity_rtp_offline": "RTP-offline",
    "compfair_toxicity_tccc_tox": "TCCC-toxic",
    "compfair_toxicity_tccc_random": "TCCC-random",
    "compfair_toxicity_tccc_safe": "TCCC-safe",
}
TOXICITY_HEADLINE = {"emt": "EMT", "tox_prob": "Tox. prob."}

STEREOSET_TASKS = {
    "compfair_stereoset": "StereoSet",
    "compfair_stereoset_intrasentence": "StereoSet intra",
    "compfair_stereoset_intersentence": "StereoSet inter",
}
STEREOSET_HEADLINE = {"ss": ("SS", "50"), "lms": ("LMS", "higher"), "icat": ("ICAT", "higher")}

OTHER_BIAS = [
    Column("compfair_winobias_type1:anti_pct", "WinoBias-1 anti %", "50", "fairness"),
    Column("compfair_winobias_type2:anti_pct", "WinoBias-2 anti %", "50", "fairness"),
    Column("compfair_winobias:anti_pct", "WinoBias anti %", "50", "fairness"),
    Column("compfair_crows_pairs:pct_stereotype", "CrowS-Pairs stereo %", "50", "fairness"),
    Column("crows_pairs_english:pct_stereotype", "CrowS-Pairs (lm-eval) stereo %", "50", "fairness"),
]

# direction of every metric name the tasks report, for the full table
DIRECTIONS = {
    "word_perplexity": "lower", "byte_perplexity": "lower", "bits_per_byte": "lower",
    "toxic_count": "lower", "toxic_frac": "lower", "tox_sum": "lower", "emt": "lower", "tox_prob": "lower",
    "ss": "50", "lms": "higher", "icat": "higher", "anti_pct": "50", "pct_stereotype": "50",
}


def _present(frame: pd.DataFrame, key: str) -> bool:
    return key in frame.columns and frame[key].notna().any()


def stereoset_columns(frame: pd.DataFrame) -> list[Column]:
    """The StereoSet group's overall scores when present, else those of each sub-task."""
    tasks = [t for t in STEREOSET_TASKS if _present(frame, f"{t}:ss")]
    if "compfair_stereoset" in tasks:
        tasks = ["compfair_stereoset"]
    return [Column(f"{t}:{m}", f"{STEREOSET_TASKS[t]} {label}", better, "metric" if m == "lms" else "fairness")
            for t in tasks for m, (label, better) in STEREOSET_HEADLINE.items()]


def toxicity_columns(frame: pd.DataFrame) -> list[Column]:
    return [Column(f"{t}:{m}", f"{short} {label}", "lower", "fairness")
            for t, short in TOXICITY_TASKS.items() for m, label in TOXICITY_HEADLINE.items()]


def headline(frame: pd.DataFrame) -> list[Column]:
    """The columns of the main table, those with at least one value, in reading order."""
    candidates = INFO + PERPLEXITY + toxicity_columns(frame) + stereoset_columns(frame) + OTHER_BIAS
    return [c for c in candidates if c.kind == "info" and c.key in frame.columns or _present(frame, c.key)]


def all_metrics(frame: pd.DataFrame) -> list[Column]:
    """Every metric column of the frame (for the full table), stderr columns left to the cells."""
    columns = []
    for key in frame.columns:
        if ":" not in key or key.endswith("_stderr") or not frame[key].notna().any():
            continue
        metric = key.split(":", 1)[1]
        base = metric.split("_")[0] if metric.split("_")[0] in ("ss", "lms", "icat") else metric
        columns.append(Column(key, key, DIRECTIONS.get(base, DIRECTIONS.get(metric, ""))))
    return columns


def first_present(frame: pd.DataFrame, columns: list[Column]) -> Column | None:
    return next((c for c in columns if _present(frame, c.key)), None)
