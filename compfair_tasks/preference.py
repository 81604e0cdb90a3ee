"""Scoring shared by the sentence-preference tasks (StereoSet, WinoBias, CrowS-Pairs).

Each document offers a few candidate sentences; lm-eval scores every candidate as one
`loglikelihood(context, continuation)` request and hands back the summed log-likelihoods.
A candidate's *score* is then either

- ``mean``: the summed log-likelihood divided by the number of continuation tokens, the
  official StereoSet causal-LM rule (it averages per-token log-probabilities), or
- ``sum``: the summed log-likelihood itself.

The rule comes from task metadata (``--metadata '{"preference_score": "sum"}'``), default ``mean``.
The per-token mean needs each candidate's token count under the model's own tokenizer, counted
exactly as lm-eval's HFLM splits context and continuation (see `TokenCounter`). The tokenizer is
found in the task metadata, into which lm-eval (>= 0.4.9) merges ``--model_args``: ``tokenizer``,
else ``pretrained``. With neither (a model object passed to `simple_evaluate`, an API model), the
loaders fall back to ``sum`` and log a warning; the per-doc records carry ``score_rule`` and the
results carry a ``per_token`` metric (1 = mean, 0 = sum), so a fallback is never silent.

Comparisons are strict: a candidate "wins" only with a strictly higher score, so ties go to the
other side (StereoSet counts a stereotype/anti-stereotype tie as anti, as the official code does).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from compfair_tasks import data, hub
from compfair_tasks.errors import CompfairError

log = logging.getLogger(__name__)


class PreferenceSettingsError(CompfairError, ValueError):
    """A scoring rule, tokenizer or prefix token that the preference tasks cannot use."""

SCORE_RULES = ("mean", "sum")
SCORE_RULE_KEY = "preference_score"


def score_rule(metadata: dict | None) -> str:
    rule = str((metadata or {}).get(SCORE_RULE_KEY, "mean")).lower()
    if rule not in SCORE_RULES:
        raise PreferenceSettingsError(f"{SCORE_RULE_KEY}={rule!r} is not a scoring rule; use one of {', '.join(SCORE_RULES)}")
    return rule


def candidate_scores(loglikelihoods, n_tokens, rule: str) -> list[float]:
    """Score of each candidate under `rule` ('mean' divides by its token count)."""
    if rule == "sum":
        return [float(ll) for ll in loglikelihoods]
    if rule != "mean":
        raise ValueError(f"unknown scoring rule {rule!r}; use one of {', '.join(SCORE_RULES)}")
    if n_tokens is None or len(n_tokens) != len(loglikelihoods):
        raise ValueError("per-token scoring needs one token count per candidate")
    if any(n <= 0 for n in n_tokens):
        raise ValueError(f"a candidate has no continuation tokens (counts {list(n_tokens)}); cannot average")
    return [float(ll) / n for ll, n in zip(loglikelihoods, n_tokens)]


def beats(score: float, other: float) -> bool:
    """True when `score` wins over `other`; a tie is not a win."""
    return score > other


def loglikelihoods(results) -> list[float]:
    """The summed log-likelihoods from lm-eval's per-choice (loglikelihood, is_greedy) results."""
    return [float(r[0]) if isinstance(r, (tuple, list)) else float(r) for r in results]


def doc_scores(doc: dict, results) -> list[float]:
    """Candidate scores of a document built by `annotate` (its `score_rule` and `n_tokens`)."""
    return candidate_scores(loglikelihoods(results), doc.get("n_tokens"), doc["score_rule"])


# --- token counting ------------------------------------------------------------------------------


@dataclass
class TokenCounter:
    """Counts continuation tokens exactly as lm-eval's HFLM scores a (context, continuation) pair.

    HFLM (lm_eval/api/model.py: TemplateLM.loglikelihood and _encode_pair):
    - empty context: the continuation is encoded without special tokens and conditioned on the
      prefix token (BOS, else EOS); if the encoding already starts with that token, the first
      token becomes the context and is not scored;
    - otherwise trailing whitespace moves from the context to the continuation; causal models
      encode context+continuation whole and score the tokens past len(encode(context))
      (so merges across the boundary are counted as HFLM counts them); seq2seq models encode
      the continuation alone, without special tokens.
    """

    tokenizer: object
    seq2seq: bool = False
    prefix_token_id: int | None = None
    name: str = ""

    def __post_init__(self):
        if self.prefix_token_id is None:
            bos, eos = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
            self.prefix_token_id = bos if bos is not None else eos

    def _encode_many(self, texts: list[str], **kwargs) -> list[list[int]]:
        if not texts:
            return []
        if callable(self.tokenizer):  # HF tokenizers: one batched (Rust) call, same ids as .encode
            return self.tokenizer(texts, **kwargs)["input_ids"]
        return [self.tokenizer.encode(text, **kwargs) for text in texts]

    def prefix_text(self) -> str:
        """The prefix token as text ("" if none): lm-eval's tok_encode adds no BOS to a string that starts with it."""
        return "" if self.prefix_token_id is None else self.tokenizer.decode([self.prefix_token_id])

    def count(self, context: str, continuation: str) -> int:
        return self.counts([(context, continuation)])[0]

    def counts(self, pairs: list[tuple[str, str]]) -> list[int]:
        """Scored continuation tokens of each (context, continuation) pair, tokenized in batches."""
        empty = [i for i, (context, _) in enumerate(pairs) if context == ""]
        if empty and self.prefix_token_id is None:
            raise PreferenceSettingsError(
                f"tokenizer {self.name or type(self.tokenizer).__name__} has neither a BOS nor an EOS token, so "
                "lm-eval cannot score a sentence from an empty context; pass one with "
                "--model_args prefix_token_id=<id> (the token the model should condition on)"
            )
        out = [0] * len(pairs)
        for i, ids in zip(empty, self._encode_many([pairs[i][1] for i in empty], add_special_tokens=False)):
            out[i] = len(ids) - 1 if ids and ids[0] == self.prefix_token_id else len(ids)
        rest = [i for i, (context, _) in enumerate(pairs) if context != ""]
        moved = []
        for i in rest:
            context, continuation = pairs[i]
            n_spaces = len(context) - len(context.rstrip())
            if n_spaces:
                context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
            moved.append((context, continuation))
        if self.seq2seq:
            lengths = [len(ids) for ids in self._encode_many([c for _, c in moved], add_special_tokens=False)]
        else:
            whole = self._encode_many([context + continuation for context, continuation in moved])
            contexts = self._encode_many([context for context, _ in moved])
            lengths = [len(w) - len(c) for w, c in zip(whole, contexts)]
        for i, n in zip(rest, lengths):
            out[i] = n
        return out


def token_counter(metadata: dict | None) -> TokenCounter | None:
    """The model's TokenCounter from task metadata (lm-eval merges --model_args into it), or None."""
    metadata = metadata or {}
    data.text_value(metadata, "tokenizer")  # a number or a list here is a mistake, not "no tokenizer"
    prefix = data.whole_number(metadata, "prefix_token_id", minimum=0)
    name = hub.model_name(metadata)
    if name is None:
        return None
    try:
        tokenizer = hub.load_tokenizer(metadata)
    except Exception as error:
        raise PreferenceSettingsError(
            f"cannot load the tokenizer {name!r} to count candidate tokens for per-token scoring ({error}); "
            f"pass a loadable one with --metadata '{{\"tokenizer\": \"<path or hub id>\"}}' "
            f"or score by summed log-likelihood with --metadata '{{\"{SCORE_RULE_KEY}\": \"sum\"}}'"
        ) from error
    backend = metadata.get("backend")
    if backend in ("causal", "seq2seq"):
        seq2seq = backend == "seq2seq"
    else:
        try:
            seq2seq = bool(getattr(hub.load_config(metadata), "is_encoder_decoder", False))
        except Exception:  # a tokenizer-only folder: lm-eval's HF models default to causal
            seq2seq = False
    return TokenCounter(tokenizer, seq2seq=seq2seq, prefix_token_id=prefix, name=name)


def annotate(docs: list[dict], metadata: dict | None, task: str, start_from_prefix: bool = False) -> list[dict]:
    """Add `score_rule` and `n_tokens` (per candidate) to docs that hold `context` and `choices`.

    The choices must be the exact continuations lm-eval will score (the task's target_delimiter
    is ""), so the counts match HFLM's. Falls back to 'sum' (logged) when no tokenizer is known.
    `start_from_prefix`: a non-empty context starts from lm-eval's prefix token (BOS, else EOS), as an
    empty one does, so every sentence is scored as text that begins a document; `context_prefix` records it.
    """
    from compfair_tasks.models import check_task_model

    check_task_model(metadata, task)
    rule = score_rule(metadata)
    counter = None
    if rule == "mean" or start_from_prefix:
        try:
            counter = token_counter(metadata)
        except ValueError:
            if rule == "mean":
                raise
            log.warning("%s: the model's tokenizer does not load, so contexts do not start from its BOS token", task)
    if rule == "mean" and counter is None:
        log.warning(
            "%s: no tokenizer in the task metadata (neither --model_args pretrained=... nor "
            "--metadata '{\"tokenizer\": ...}'), so candidates cannot be averaged per token; scoring by the "
            "SUMMED log-likelihood instead (results report per_token=0).", task
        )
        rule = "sum"
    if start_from_prefix:
        prefix = counter.prefix_text() if counter else ""
        for doc in docs:
            doc["context_prefix"] = prefix if doc["context"] else ""
            doc["context"] = doc["context_prefix"] + doc["context"]
    counted = counter if rule == "mean" else None
    pairs = [(doc["context"], choice) for doc in docs for choice in doc["choices"]] if counted else []
    counts = iter(counted.counts(pairs)) if counted else None
    for doc in docs:
        doc["score_rule"] = rule
        doc["n_tokens"] = [next(counts) for _ in doc["choices"]] if counted else None
    return docs


def doc_to_text(doc: dict) -> str:
    return doc["context"]


def doc_to_choice(doc: dict) -> list[str]:
    return doc["choices"]


def per_token_flag(doc: dict) -> float:
    return 1.0 if doc["score_rule"] == "mean" else 0.0
