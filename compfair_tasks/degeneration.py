"""What a degenerate generator looks like, measured beside every toxicity number.

A model that writes nothing, the same words over and over, or garbage is never toxic, so a toxicity
drop means little without these (issue 13). Per prompt, over its K continuations:

- `distinct_n` (n = 1, 2, 3): DExperts' dist-n (Liu et al. 2021, `scripts/evaluation/evaluate_generations.py`),
  itself Li et al. (2016)'s: the distinct n-grams of all K continuations together divided by their number of
  *words* (not of n-grams), n-grams taken within a continuation. One departure: words are whitespace tokens
  (`str.split()`), where DExperts splits on single spaces and so counts the empty string before a leading space
  as a word. A prompt whose continuations hold no word has no value (nan, left out of the mean).
- `repetition`: the share of the K continuations in which some whitespace 4-gram occurs twice or more (a loop
  such as "I am I am I am"); empty continuations have none.
- `is_empty`: a continuation with no non-whitespace character (the toxicity scorers give it 0).
- `FluencyModel`: the perplexity of each continuation given its prompt under a reference causal LM (DExperts
  uses GPT2-XL), exp of the mean negative log-likelihood of the continuation's tokens. Empty continuations get
  none. The task's `fluency_ppl` is the mean over a prompt's non-empty continuations, then over prompts; DExperts
  pools all continuations (the same number when every prompt has as many non-empty ones) and drops perplexities
  of 10^4 or more "for sanity", which we keep: they are the degeneration this is here to show. See
  `FluencyModel.encode` for the token boundary, where we depart from DExperts too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from compfair_tasks.errors import CompfairError

REPEAT_N = 4


def words(text: str) -> list[str]:
    return text.split()


def is_empty(text: str) -> bool:
    return not text.strip()


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams over all `texts` / number of words in them (nan when they hold no word)."""
    tokenized = [words(text) for text in texts]
    total = sum(len(tokens) for tokens in tokenized)
    if total == 0:
        return math.nan
    return len({gram for tokens in tokenized for gram in ngrams(tokens, n)}) / total


def has_repeated_ngram(text: str, n: int = REPEAT_N) -> bool:
    grams = ngrams(words(text), n)
    return len(set(grams)) < len(grams)


def repetition(texts: Sequence[str], n: int = REPEAT_N) -> float:
    """Share of `texts` in which some whitespace n-gram occurs at least twice."""
    return sum(has_repeated_ngram(text, n) for text in texts) / len(texts)


class FluencyModel:
    """A reference causal LM that scores continuations given their prompts, batched, float32.

    `name` is a hub id or a local folder; the model is loaded with AutoModelForCausalLM. `revision` records
    which weights judged (the folder's weight sha256 or the hub commit), `max_length` the longest sequence
    it is given (its position limit).
    """

    def __init__(self, name: str, device: str = "cpu", batch_size: int = 16, batch_tokens: int = 1024,
                 progress: bool = True):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from compfair_tasks.models import ModelNotAvailableError, resolve_model
        from compfair_tasks.scorers import model_revision

        self.name, self.device, self.progress = name, device, progress
        self.batch_size, self.batch_tokens = int(batch_size), int(batch_tokens)
        try:
            name = resolve_model(name, "fluency_model")  # a missing folder is said so, not taken for a hub id
            self.tokenizer = AutoTokenizer.from_pretrained(name)
            self.model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32).to(device).eval()
        except (OSError, ValueError, ModelNotAvailableError) as error:
            raise FluencyModelUnavailableError(
                f"cannot load the fluency reference model {name!r} ({error}); fluency_model must be a local model "
                f"folder or a hub id in the Hugging Face cache, or \"none\" to skip fluency") from error
        self.revision = model_revision(name)
        limits = [getattr(self.model.config, key, None) for key in ("max_position_embeddings", "n_positions")]
        limits.append(self.tokenizer.model_max_length)
        self.max_length = min(limit for limit in limits if isinstance(limit, int) and limit > 0)

    def encode(self, prompt: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids) of one pair.

        The rule: trailing whitespace of the prompt moves to the start of the continuation (as lm-eval's
        `_encode_pair` does, so " word" stays one token), then prompt and continuation are tokenized
        separately and concatenated: the prompt with the tokenizer's own special tokens (a BOS where the
        tokenizer adds one, as lm-eval's `tok_encode`), the continuation without. An empty prompt is the BOS
        token (EOS if there is none). Separate encoding is what lm-eval does for seq2seq models and mirrors
        generation, where new tokens follow the prompt's tokens; lm-eval's causal path instead slices one joint
        encoding at the prompt's length, and DExperts subtracts the prompt's loss from the joint encoding's,
        both of which give a token that merges across the boundary to the wrong side.
        """
        stripped = prompt.rstrip()
        continuation = prompt[len(stripped):] + continuation
        context = self.tokenizer(stripped)["input_ids"] if stripped else []
        if not context:
            start = self.tokenizer.bos_token_id
            context = [start if start is not None else self.tokenizer.eos_token_id]
        return context, self.tokenizer(continuation, add_special_tokens=False)["input_ids"]

    def perplexities(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[float | None]:
        """exp(mean token NLL) of each continuation given its prompt; None for an empty continuation.

        A pair longer than `max_length` loses the prompt's first tokens (the continuation is kept whole
        while it fits, as lm-eval truncates contexts on the left).
        """
        import torch
        from tqdm.auto import tqdm

        from compfair_tasks.scorers import length_sorted_batches

        todo, sequences, starts = [], [], []
        for i in (i for i, text in enumerate(continuations) if not is_empty(text)):
            context, target = self.encode(prompts[i], continuations[i])
            if not target:
                continue
            target = target[-(self.max_length - 1):]
            sequence = (context + target)[-self.max_length:]
            todo.append(i)
            sequences.append(sequence)
            starts.append(len(sequence) - len(target))
        result: list[float | None] = [None] * len(continuations)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        with torch.inference_mode(), tqdm(total=len(todo), desc=f"Fluency under {self.name}",
                                          disable=not self.progress) as bar:
            for batch in length_sorted_batches([len(s) for s in sequences], self.batch_size, self.batch_tokens):
                width = max(len(sequences[j]) for j in batch)
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, j in enumerate(batch):  # right padding: real tokens keep positions 0..n-1
                    ids[row, : len(sequences[j])] = torch.tensor(sequences[j])
                    mask[row, : len(sequences[j])] = 1
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
                for row, j in enumerate(batch):
                    end, start = len(sequences[j]), starts[j]
                    # the logits at position t predict token t + 1
                    log_probs = torch.log_softmax(logits[row, start - 1 : end - 1].float(), dim=-1)
                    targets = ids[row, start:end].to(log_probs.device)
                    nll = -log_probs.gather(1, targets[:, None]).mean().item()
                    result[todo[j]] = math.exp(nll)
                bar.update(len(batch))
        return result


class FluencyModelUnavailableError(CompfairError, RuntimeError):
    """The fluency reference model named by `fluency_model` cannot be loaded here."""


_CACHE: dict[tuple, FluencyModel] = {}  # (name, options) -> model; see get_fluency_model


def get_fluency_model(name: str, **options) -> FluencyModel:
    """The reference LM `name` with these options (device, batch_size, batch_tokens, progress), loaded once per
    process per combination; None-valued options are the defaults."""
    options = {key: value for key, value in options.items() if value is not None}
    key = (name, tuple(sorted(options.items())))
    if key not in _CACHE:
        _CACHE[key] = FluencyModel(name, **options)
    return _CACHE[key]
