"""Checks every compressor runs on its output before writing it: a broken model must never be reported.

    check_compressed(model, tokenizer, reference=None, reference_tol=None, label="pruned vs gated teacher")

1. Cached vs uncached: on a few fixed prompts, greedy decoding with the KV cache (`generate`, the
   path lm_eval's generate_until takes) must give, at every step, the logits of one full forward
   over the same prefix with `use_cache=False` (the path log-likelihood tasks take). A model whose
   cache is wrong can still score log-likelihoods right and write garbage (compfair issue 11).
2. With `reference` (a model, or a function token ids -> logits), the model's logits on the prompts
   must match the reference's: the gated teacher for pruning, the float model for quantization.

Differences are measured relative to the logits' scale: max |a - b| / max |b|. On failure it raises
CompressionCheckError (a ValueError: the CLI prints it and exits 2) and the caller writes nothing.
It prints one summary line and returns the measured numbers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from compfair_tasks.errors import CompfairError

PROMPTS = ("The capital of France is", "My neighbour told me that the new doctor",
           "In 1990, the company announced", "She walked into the room and")
NEW_TOKENS = 8
# max |cached - uncached| / max |logit|: float32 kernels on different shapes differ by a few eps per
# layer (tiny models: < 1e-6; a broken cache: > 1e-1); half precision carries ~3 decimal digits
CACHE_TOL = {torch.float32: 1e-4, torch.float64: 1e-8, torch.float16: 2e-2, torch.bfloat16: 2e-2}


class CompressionCheckError(CompfairError, ValueError):
    """A compressed model failed its output check: nothing was written (the CLI prints this and exits 2)."""


def prompt_ids(model, tokenizer=None, prompts=PROMPTS) -> list[torch.Tensor]:
    """Token ids [1, n] of each prompt (seeded random ids when there is no tokenizer)."""
    vocab = model.get_input_embeddings().num_embeddings
    if tokenizer is None:
        generator = torch.Generator().manual_seed(0)
        return [torch.randint(0, vocab, (1, 6 + i), generator=generator) for i in range(len(prompts))]
    ids = [tokenizer(prompt, return_tensors="pt").input_ids for prompt in prompts]
    if max(int(i.max()) for i in ids) >= vocab:
        raise CompressionCheckError(f"the tokenizer's ids exceed the model's {vocab} embeddings: the tokenizer "
                                    "does not belong to this model")
    return ids


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


@torch.no_grad()
def cached_vs_uncached(model, input_ids: torch.Tensor, new_tokens: int = NEW_TOKENS) -> tuple[float, torch.Tensor]:
    """Greedy-decode with the KV cache; (relative difference of every step's logits from a full
    uncached forward over the same prefix, the generated ids)."""
    attention_mask = torch.ones_like(input_ids)
    pad = model.generation_config.pad_token_id
    pad = pad if pad is not None else model.generation_config.eos_token_id
    out = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, do_sample=False, use_cache=True, output_logits=True,
                         return_dict_in_generate=True, pad_token_id=pad if pad is not None else 0)
    cached = torch.stack(out.logits, dim=1)  # [batch, steps, vocab], raw logits of each step
    steps = cached.shape[1]
    full = model(out.sequences[:, :-1], attention_mask=torch.ones_like(out.sequences[:, :-1]),
                 use_cache=False).logits[:, -steps:]
    return relative_difference(cached, full), out.sequences


def check_compressed(model, tokenizer=None, reference: Callable | torch.nn.Module | None = None,
                     reference_tol: float | None = None, label: str = "vs reference", cache_tol: float | None = None,
                     prompts=PROMPTS, log=print) -> dict:
    """Check `model` before it is written; raise CompressionCheckError if it is broken.

    reference: the model (or function ids -> logits) `model` must reproduce, with `reference_tol` the
    largest allowed max |logits - reference| / max |reference| over the prompts; `label` names the
    comparison in messages (e.g. "pruned vs gated teacher"). cache_tol defaults to CACHE_TOL[dtype].
    Returns {"cache_diff", "cache_tol", "reference_diff", "reference_tol"}.
    """
    if reference is not None and reference_tol is None:
        raise ValueError("check_compressed: give reference_tol with reference")
    was_training = model.training
    model.eval()
    try:
        dtype = next(model.parameters()).dtype if any(True for _ in model.parameters()) else torch.float32
        cache_tol = CACHE_TOL.get(dtype, 1e-4) if cache_tol is None else cache_tol
        ids = [i.to(model.device) for i in prompt_ids(model, tokenizer, prompts)]
        cache_diff = max(cached_vs_uncached(model, i)[0] for i in ids)
        reference_diff = None
        if reference is not None:
            with torch.no_grad():
                reference_diff = max(relative_difference(model(i, use_cache=False).logits, _logits(reference, i))
                                     for i in ids)
    finally:
        model.train(was_training)
    result = {"cache_diff": cache_diff, "cache_tol": cache_tol, "reference_diff": reference_diff,
              "reference_tol": reference_tol}
    summary = (f"check on {len(ids)} prompts: cached vs uncached logits {cache_diff:.1e} (tol {cache_tol:.0e})"
               + ("" if reference is None else f", {label} {reference_diff:.1e} (tol {reference_tol:.0e})"))
    failed = []
    if not cache_diff <= cache_tol:  # `not <=`: a NaN fails too
        failed.append(f"greedy decoding with the KV cache gives other logits than a full forward "
                      f"({cache_diff:.2e} > {cache_tol:.0e}): generations would be wrong")
    if reference is not None and not reference_diff <= reference_tol:
        failed.append(f"{label}: logits differ by {reference_diff:.2e} > {reference_tol:.0e}")
    if failed:
        raise CompressionCheckError(f"compressed model failed its check, nothing written: {'; '.join(failed)} "
                                    f"[{summary}] (a compfair bug: please report it with the command)")
    log(f"{summary}: ok")
    return result


def _logits(reference, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        if isinstance(reference, torch.nn.Module):
            return reference(input_ids, use_cache=False).logits
        return reference(input_ids)


def frozen_reference(model, tokenizer=None, prompts=PROMPTS) -> Callable:
    """The model's logits on the check prompts, kept for later (e.g. before quantizing it in place)."""
    with torch.no_grad():
        stored = {tuple(i[0].tolist()): model(i.to(model.device), use_cache=False).logits.clone()
                  for i in prompt_ids(model, tokenizer, prompts)}
    return lambda input_ids: stored[tuple(input_ids[0].tolist())]
