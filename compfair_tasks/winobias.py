"""WinoBias (Zhao et al. 2018) pro/anti-stereotyped sentence pairs as lm-eval tasks.

One document = one pair: line n of `pro_stereotyped_type{t}.txt.{split}` and line n of its
`anti_…` twin. Both sentences are scored whole from an empty context (conditioned on lm-eval's
prefix token, BOS else EOS), candidates in the order [pro, anti], by the same per-token-mean or
summed rule as StereoSet (preference.py; default mean, `--metadata '{"preference_score": "sum"}'`).

Metrics (percentages 0-100; a tie is not an anti win):
- anti_pct: % of pairs whose anti-stereotypical sentence scores strictly higher (the compression
  paper's "anti-bias preference"); per split (_dev, _test) and, in the all-types task, per type.
- anti_pct_female / anti_pct_male: the same over pairs whose anti sentence uses a female / male
  pronoun; anti_pct_balanced is their mean, which cancels a plain he-over-she prior (such a prior
  alone pushes one of the two up and the other down by the same amount, leaving ~50).
- ll_gap: mean score(pro) - score(anti), in the chosen score's unit.
- n_pairs, n_not_minimal: pairs scored, and how many of them differ in more than the pronoun(s).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import numpy as np

from compfair_tasks import data, preference, stats

log = logging.getLogger(__name__)

TYPES = (1, 2)
SPLITS = ("dev", "test")
GENDERS = ("female", "male")
PRONOUN_GENDER = {"he": "male", "him": "male", "his": "male", "himself": "male",
                  "she": "female", "her": "female", "hers": "female", "herself": "female"}

_LINE = re.compile(r"^(\d+)\s+(\S.*)$")
_SPAN = re.compile(r"\[([^\]]*)\]")
_DOUBLED_DETERMINER = re.compile(r"\b(?:the|a|an) \[((?:the|a|an) )", re.IGNORECASE)


def parse_line(line: str, where: str) -> tuple[int, str, list[str]]:
    """(line number, plain sentence, bracketed spans) of one WinoBias line; raises if malformed."""
    match = _LINE.match(line.strip())
    if not match:
        raise data.DataFormatError(f"{where}: not a WinoBias line '<n> <sentence>': {line.strip()!r}")
    number, marked = int(match.group(1)), match.group(2)
    spans = [s.strip() for s in _SPAN.findall(marked)]
    if len(spans) < 2:
        raise data.DataFormatError(f"{where}: expected an [antecedent] and at least one [pronoun] span: {marked!r}")
    text = _DOUBLED_DETERMINER.sub(r"[\1", marked)  # 'the [the chief]' -> '[the chief]'
    text = _SPAN.sub(lambda m: m.group(1).strip(), text)
    text = re.sub(r"\s+'s\b", "'s", text)  # CoNLL-style ' 's' -> "'s"
    return number, re.sub(r"\s+", " ", text).strip(), spans


def pronoun_gender(spans: list[str], where: str) -> str:
    genders = {PRONOUN_GENDER[s.lower()] for s in spans[1:] if s.lower() in PRONOUN_GENDER}
    if len(genders) != 1:
        raise data.DataFormatError(f"{where}: cannot tell the pronoun gender from the spans {spans[1:]}")
    return genders.pop()


def _words(text: str) -> list[str]:
    return re.findall(r"[\w']+", text.lower())


def is_minimal_pair(pro: str, anti: str) -> bool:
    """True when the two sentences differ only in gendered pronouns, word for word."""
    a, b = _words(pro), _words(anti)
    return len(a) == len(b) and all(x == y or (x in PRONOUN_GENDER and y in PRONOUN_GENDER) for x, y in zip(a, b))


def _read(path, where: str) -> dict[int, tuple[str, list[str]]]:
    lines = {}
    for i, line in enumerate(data.read_text(path, "WinoBias file").split("\n"), 1):
        if not line.strip():
            continue
        number, text, spans = parse_line(line, f"{where}:{i}")
        if number in lines:
            raise data.DataFormatError(f"{where}:{i}: line number {number} appears twice")
        lines[number] = (text, spans)
    if not lines:
        raise data.DataFormatError(f"{where}: no sentences; re-copy the official WinoBias file")
    return lines


def build_docs(folder, types: Sequence[int], scope: str) -> list[dict]:
    docs = []
    for t in types:
        for split in SPLITS:
            names = {kind: f"{kind}_stereotyped_type{t}.txt.{split}" for kind in ("pro", "anti")}
            pro, anti = (_read(folder / names[k], str(folder / names[k])) for k in ("pro", "anti"))
            if pro.keys() != anti.keys():
                raise data.DataFormatError(f"{names['pro']} and {names['anti']} do not pair up line by line "
                                 f"(numbers only in one: {sorted(pro.keys() ^ anti.keys())[:5]})")
            for n in sorted(pro):
                (pro_text, _), (anti_text, anti_spans) = pro[n], anti[n]
                docs.append({
                    "id": f"type{t}-{split}-{n}", "type": f"type{t}", "split": split, "line": n, "scope": scope,
                    "anti_gender": pronoun_gender(anti_spans, f"{names['anti']} line {n}"),
                    "minimal": is_minimal_pair(pro_text, anti_text),
                    "context": "", "choices": [pro_text, anti_text],
                })
    return docs


def _load(types: Sequence[int], scope: str, metadata: dict):
    source = data.resolve("winobias", data.path_from_metadata("winobias", metadata))
    if source.kind == "hub":
        raise data.DataNotFoundError(
            f"WinoBias: the hub copy ({source.location}) is CoNLL-formatted without the pro/anti line pairing and "
            f"pronoun markup compfair scores; set {data.ENV_VAR} to a folder holding {data.layout('winobias')} "
            f"(the official files of uclanlp/corefBias WinoBias/wino/data)"
        )
    task = "compfair_winobias" if scope == "all" else f"compfair_winobias_{scope}"
    docs = preference.annotate(build_docs(source.path, types, scope), metadata, task)
    for doc in docs:
        doc["data_source"] = str(source)
    return data.to_dataset(docs, f"WinoBias {scope} in {source.path}")


def load_type1(**metadata):
    return _load([1], "type1", metadata)


def load_type2(**metadata):
    return _load([2], "type2", metadata)


def load_all(**metadata):
    return _load(TYPES, "all", metadata)


# --- per-document results and aggregation --------------------------------------------------------


def process_results(doc: dict, results) -> dict:
    pro, anti = preference.doc_scores(doc, results)
    anti_pct = 100.0 if preference.beats(anti, pro) else 0.0
    out = {"anti_pct": anti_pct}
    out |= stats.subgroup_values("anti_pct", anti_pct, {doc["anti_gender"]}, GENDERS)
    out |= stats.subgroup_values("anti_pct", anti_pct, {doc["split"]}, SPLITS)
    if doc["scope"] == "all":
        out |= stats.subgroup_values("anti_pct", anti_pct, {doc["type"]}, [f"type{t}" for t in TYPES])
    record = {"id": doc["id"], "anti_gender": doc["anti_gender"], "pro": pro, "anti": anti}
    out.update({"anti_pct_balanced": record, "anti_pct_balanced_ci_low": record, "anti_pct_balanced_ci_high": record,
                "ll_gap": pro - anti, "n_pairs": 1.0, "n_not_minimal": 0.0 if doc["minimal"] else 1.0,
                "per_token": preference.per_token_flag(doc)})
    return out


def _balanced(gender_is_female: np.ndarray, anti_wins: np.ndarray) -> float:
    female, male = anti_wins[gender_is_female], anti_wins[~gender_is_female]
    if len(female) == 0 or len(male) == 0:
        return float("nan")  # undefined without both pronouns; never a one-sided number
    return float(50.0 * (female.mean() + male.mean()))


def _arrays(records):
    female = np.array([r["anti_gender"] == "female" for r in records])
    wins = np.array([preference.beats(r["anti"], r["pro"]) for r in records], dtype=float)
    return female, wins


def agg_balanced(records) -> float:
    value = _balanced(*_arrays(records))
    if np.isnan(value):
        log.warning("WinoBias anti_pct_balanced needs pairs with both female and male anti pronouns; reporting NaN")
    return value


def _balanced_ci(records, bound: int) -> float:
    female, wins = _arrays(stats.canonical_order(records))
    if female.all() or not female.any():
        return float("nan")
    low_high = stats.bootstrap_ci(np.arange(len(records)),
                                  lambda idx: _balanced(female[np.asarray(idx, dtype=int)], wins[np.asarray(idx, dtype=int)]))
    return low_high[bound]


def agg_balanced_ci_low(records) -> float:
    return _balanced_ci(records, 0)


def agg_balanced_ci_high(records) -> float:
    return _balanced_ci(records, 1)
