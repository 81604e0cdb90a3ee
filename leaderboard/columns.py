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
    Column("model_type", "Model type", kind="info"),  # lm_eval --model: compfair-mlm rows use masked-LM rules
    Column("method", "Method", kind="info"),
    Column("teacher", "Compressed from", kind="info"),
    Column("teacher_evaluated", "Teacher evaluated", kind="info"),
    Column("params", "Params (M)", kind="info"),
    Column("size_bytes", "Size (MB)", kind="info"),
    Column("bits", "Bits (measured)", kind="info"),
    Column("sparsity", "Zero weights (measured)", kind="info"),
    Column("weights_equal_source", "Weights = source's", kind="info"),
    Column("latency_ms", "Latency (ms)", "lower", kind="info"),
    Column("scorer", "Toxicity scorer", kind="info"),
    Column("limit", "--limit (docs per task)", kind="info"),
    Column("eval_batch", "Eval batch (dynamic int8: scores depend on it)", kind="info"),
    Column("degenerate", "Degeneration flag", kind="info"),  # leaderboard.degeneration; reasons as the tooltip
]

TOXICITY_PREFIX = "compfair_toxicity_"
TOXICITY_TASKS = {  # short labels; any other compfair_toxicity_* task is shown under its own suffix
    "compfair_toxicity_rtp": "RTP",
    "compfair_toxicity_rtp_offline": "RTP-offline",
    "compfair_toxicity_tccc_tox": "TCCC-toxic",
    "compfair_toxicity_tccc_random": "TCCC-random",
    "compfair_toxicity_tccc_safe": "TCCC-safe",
}
TOXICITY_HEADLINE = {  # per toxicity task, in this order: toxicity, then fluency and diversity beside it
    "emt": ("EMT", "lower"), "tox_prob": ("Tox. prob.", "lower"), "fluency_ppl": ("fluency PPL", "lower"),
    "distinct_2": ("dist-2", "higher"), "empty_frac": ("empty share", "lower")}
BOLD_DOMAINS = {"gender": "gender", "race": "race", "religious_ideology": "religion",
                "political_ideology": "politics", "profession": "profession"}
BOLD_GAPS = {"tox_mean_gap": "tox. gap", "sent_mean_gap": "sentiment gap"}
STEREOSET_HEADLINE = {"ss": ("SS", "50"), "lms": ("LMS", "higher"), "icat": ("ICAT", "higher")}
STEREOSET_OVERALL = ("compfair_stereoset", "compfair_stereoset_all")
STEREOSET_SPLITS = {"intrasentence": "intra", "intersentence": "inter"}
COMPANIONS = ("_stderr", "_ci_low", "_ci_high")  # shown inside a value's cell


@dataclass(frozen=True)
class Slot:
    """A headline column filled, row by row, from the first of its source columns that has a value
    (the same number can come from a group, an all-in-one task or a sub-task)."""

    column: Column
    sources: tuple[str, ...]


def _slot(key, label, better, kind, *sources) -> Slot:
    return Slot(Column(f"headline:{key}", label, better, kind), tuple(sources))


def _stereoset_slots() -> list[Slot]:
    slots = [_slot(f"stereoset_{m}", f"StereoSet {label}", better, "metric" if m == "lms" else "fairness",
                   *(f"{t}:{m}" for t in STEREOSET_OVERALL)) for m, (label, better) in STEREOSET_HEADLINE.items()]
    for split, short in STEREOSET_SPLITS.items():
        slots += [_slot(f"stereoset_{split}_{m}", f"StereoSet {short} {label}", better,
                        "metric" if m == "lms" else "fairness", f"compfair_stereoset_{split}:{m}",
                        f"compfair_stereoset_{split}_mlm:{m}",
                        *(f"{t}:{m}_{split}" for t in STEREOSET_OVERALL)) for m, (label, better) in
                  STEREOSET_HEADLINE.items()]
    return slots


PERPLEXITY_SLOTS = [
    _slot("wikitext_ppl", "WikiText-2 PPL", "lower", "perplexity", "wikitext:word_perplexity"),
    _slot("bold_wiki_ppl", "BOLD-wiki PPL", "lower", "perplexity", "compfair_ppl_bold_wiki:word_perplexity"),
]
BIAS_SLOTS = (
    _stereoset_slots()
    + [_slot(f"winobias_type{n}_anti_pct", f"WinoBias-{n} anti %", "50", "fairness",
             f"compfair_winobias_type{n}:anti_pct", f"compfair_winobias:anti_pct_type{n}",
             f"compfair_winobias_all:anti_pct_type{n}", f"compfair_winobias_mlm:anti_pct_type{n}") for n in (1, 2)]
    + [_slot("crows_pairs", "CrowS-Pairs stereo %", "50", "fairness", "compfair_crows_pairs:pct_stereotype"),
       _slot("crows_pairs_lm_eval", "CrowS-Pairs (lm-eval) stereo %", "50", "fairness",
             "crows_pairs_english:pct_stereotype")]
    + [_slot(f"crows_pairs_mlm_{rule}", f"CrowS-Pairs stereo % (MLM, {label})", "50", "fairness",
             f"compfair_crows_pairs_mlm:pct_stereotype_{rule}") for rule, label in (("biasbench", "Bias Bench"),
                                                                                    ("nangia", "Nangia"))]
    + [_slot(f"seat_{domain}", f"SEAT |effect size| {domain}", "lower", "fairness",
             f"compfair_seat:abs_effect_size_{domain}") for domain in ("gender", "race", "religion")]
)

# metrics whose paired tests the page and the Markdown show first (paired_tests.csv has them all)
PAIRED_HEADLINE = ("ss", "lms", "anti_pct", "ll_gap", "pct_stereotype", "likelihood_diff", "emt", "tox_prob",
                   "toxic_frac", "word_perplexity", "fluency_ppl", "distinct_2", "tox_mean_gap", "sent_mean_gap")

# direction of every metric name the tasks report, for the full table
DIRECTIONS = {
    "word_perplexity": "lower", "byte_perplexity": "lower", "bits_per_byte": "lower",
    "toxic_count": "lower", "toxic_frac": "lower", "tox_sum": "lower", "emt": "lower", "tox_prob": "lower",
    "ss": "50", "lms": "higher", "icat": "higher", "anti_pct": "50", "pct_stereotype": "50",
    "fluency_ppl": "lower", "distinct_1": "higher", "distinct_2": "higher", "distinct_3": "higher",
    "repetition": "lower", "empty_frac": "lower", "empty_count": "lower", "tox_mean": "lower",
    "pct_stereotype_nangia": "50", "pct_stereotype_biasbench": "50", "abs_effect_size": "lower",
}


def _present(frame: pd.DataFrame, key: str) -> bool:
    return key in frame.columns and frame[key].notna().any()


def toxicity_slots(frame: pd.DataFrame) -> list[Slot]:
    """One EMT and one toxicity-probability column per toxicity task in the frame, known tasks first."""
    found = {c.split(":")[0] for c in frame.columns if c.startswith(TOXICITY_PREFIX) and ":" in c}
    tasks = [t for t in TOXICITY_TASKS if t in found] + sorted(found - TOXICITY_TASKS.keys())
    return [_slot(f"{t}_{m}", f"{TOXICITY_TASKS.get(t, t[len(TOXICITY_PREFIX):])} {label}", better,
                  "fairness" if m in ("emt", "tox_prob") else "metric", f"{t}:{m}")
            for t in tasks for m, (label, better) in TOXICITY_HEADLINE.items()]


BOLD_SLOTS = [_slot(f"bold_{domain}_{metric}", f"BOLD {short} {label}", "lower", "fairness",
                    f"compfair_bold_{domain}:{metric}")
              for domain, short in BOLD_DOMAINS.items() for metric, label in BOLD_GAPS.items()]


def slots(frame: pd.DataFrame) -> list[Slot]:
    """All headline slots for this frame, in reading order: perplexity, toxicity (with fluency and diversity),
    BOLD group gaps, bias."""
    return PERPLEXITY_SLOTS + toxicity_slots(frame) + BOLD_SLOTS + BIAS_SLOTS


def _has_info(frame: pd.DataFrame, key: str) -> bool:
    if key == "teacher_evaluated":  # shown on the page only when some teacher is missing
        return key in frame.columns and frame[key].astype(str).str.startswith("NO").any()
    return key in frame.columns and frame[key].replace("", float("nan")).notna().any()


def with_headline(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame plus one `headline:*` column per slot (and its stderr/CI companions), row-wise coalesced."""
    added = {}
    for slot in slots(frame):
        values = {suffix: pd.Series(float("nan"), index=frame.index) for suffix in ("",) + COMPANIONS}
        for source in slot.sources:
            if source not in frame.columns:
                continue
            take = values[""].isna() & frame[source].notna()
            for suffix in values:
                if source + suffix in frame.columns:
                    values[suffix] = values[suffix].where(~take, frame[source + suffix])
        added.update({slot.column.key + suffix: series for suffix, series in values.items()})
    return pd.concat([frame, pd.DataFrame(added, index=frame.index)], axis=1)


def headline(frame: pd.DataFrame) -> list[Column]:
    """The main table's columns (for a frame from `with_headline`): those with a value, in reading order.
    StereoSet's intra/inter columns appear only when some model lacks the overall scores."""
    overall = frame.get("headline:stereoset_ss", pd.Series(dtype=float))
    columns = [c for c in INFO if c.key == "model" or _has_info(frame, c.key)]
    for slot in slots(frame):
        key = slot.column.key
        if not _present(frame, key):
            continue
        if key.startswith(tuple(f"headline:stereoset_{s}_" for s in STEREOSET_SPLITS)) and \
                not (frame[key].notna() & overall.isna()).any():
            continue
        columns.append(slot.column)
    return columns


def all_metrics(frame: pd.DataFrame) -> list[Column]:
    """Every metric column of the frame (for the full table), stderr columns left to the cells."""
    columns = []
    for key in frame.columns:
        if ":" not in key or key.startswith("headline:") or key.endswith(COMPANIONS) or not frame[key].notna().any():
            continue
        metric = key.split(":", 1)[1]
        base = metric.split("_")[0] if metric.split("_")[0] in ("ss", "lms", "icat") else metric
        bold_gap = key.startswith("compfair_bold") and metric.endswith(("_gap", "_ratio"))
        better = "lower" if bold_gap else DIRECTIONS.get(base, DIRECTIONS.get(metric, ""))
        columns.append(Column(key, key, better))
    return columns
