"""`compfair compress sparsify`: one-shot weight sparsity of a causal LM's linear layers (CPU).

Methods (as in Decoding Compressed Trust, Hong et al. 2024, and Wanda, Sun et al. 2024):

- `magnitude`: zero the smallest |w| of each linear layer (no data). Our few lines: llm-compressor's
  MagnitudePruningModifier is a training-schedule modifier (start/end epochs), not a one-shot step.
- `wanda`: zero the smallest |w_ij| * ||x_j||_2 within each output row, x the layer's input on
  calibration text (Sun et al. 2024): llm-compressor's WandaPruningModifier.
- `sparsegpt`: OBS-style pruning with Hessian-based updates of the surviving weights (Frantar &
  Alistarh 2023): llm-compressor's SparseGPTModifier.
  Both run on CPU (measured on SmolLM2-135M, 16 blocks of 256 tokens: 39 s / 38 s of CPU time) and
  prune layer by layer on the outputs of the already pruned layers, as in the papers.

`--sparsity 0.5` prunes that fraction (unstructured); `--pattern 2:4` keeps the 2 largest of every 4
consecutive inputs of a row (semi-structured, what sparse tensor cores run). Embeddings, norms and
the LM head stay dense (as in both papers). The output is a plain transformers checkpoint (zeros
stored in the float weights): it loads with `AutoModelForCausalLM.from_pretrained`, `lm_eval --model
hf` and vLLM; `compressors.verify.measure_weights` counts the zeros back from the saved files.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from compfair_tasks import options
from compfair_tasks.errors import CompfairError

METHODS = ("magnitude", "wanda", "sparsegpt")
NEEDS_DATA = ("wanda", "sparsegpt")
LINEAR_TYPES = (nn.Linear, Conv1D)


# sanity bound on the relative logit change vs the dense source (half the weights gone moves logits a lot:
# Wanda 50% on SmolLM2 measured 0.75); it catches NaN/garbage, the cached-vs-uncached check broken generation
REFERENCE_TOL = 2.0


class SparsifyError(CompfairError, ValueError):
    """Bad settings, reported by the CLI in one line."""


def parse_pattern(pattern: str | None) -> tuple[int, int] | None:
    """'2:4' -> (2, 4): keep n of every m consecutive inputs."""
    if pattern is None:
        return None
    keep, _, group = pattern.partition(":")
    try:
        n, m = int(keep), int(group)
    except ValueError:
        raise SparsifyError(f"--pattern must look like N:M (e.g. 2:4), got {pattern!r}") from None
    if not 0 < n < m:
        raise SparsifyError(f"--pattern N:M needs 0 < N < M, got {pattern!r}")
    return n, m


def block_linear_layers(model) -> dict[str, nn.Module]:
    """The linear layers of the transformer blocks (not the LM head): nn.Linear, and transformers' Conv1D
    (GPT-2's layers: a linear layer whose weight is stored transposed, [inputs, outputs])."""
    return {name: module for name, module in model.named_modules()
            if isinstance(module, LINEAR_TYPES) and name != "lm_head" and not name.endswith(".lm_head")}


def rows_by_output(module: nn.Module) -> torch.Tensor:
    """The layer's weight as [outputs, inputs] (a view: writing it writes the layer), whatever its storage."""
    return module.weight.data.t() if isinstance(module, Conv1D) else module.weight.data


def prune_mask(scores: torch.Tensor, sparsity: float | None, pattern: tuple[int, int] | None,
               per_row: bool) -> torch.Tensor:
    """Boolean mask of the weights to zero: the lowest scores (per row or per layer, or n:m groups)."""
    rows, cols = scores.shape
    if pattern is not None:
        keep, group = pattern
        if cols % group:
            raise SparsifyError(f"a layer with {cols} inputs cannot take an {keep}:{group} pattern")
        grouped = scores.reshape(rows, cols // group, group)
        drop = grouped.argsort(dim=-1)[..., : group - keep]
        return torch.zeros_like(grouped, dtype=torch.bool).scatter_(-1, drop, True).reshape(rows, cols)
    if per_row:
        count = int(cols * sparsity)
        drop = scores.argsort(dim=1)[:, :count]
        return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, drop, True)
    count = int(scores.numel() * sparsity)
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    mask[scores.flatten().argsort()[:count]] = True
    return mask.view(rows, cols)


def sparsify_model(model, method: str, sparsity: float | None = 0.5, pattern: tuple[int, int] | None = None,
                   blocks: torch.Tensor | None = None) -> dict[str, float]:
    """Zero weights of every block linear layer in place; returns {layer: fraction zeroed}."""
    if method not in METHODS:
        raise SparsifyError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if method in NEEDS_DATA and blocks is None:
        raise SparsifyError(f"{method} needs calibration text (blocks of token ids)")
    layers = block_linear_layers(model)
    if not layers:
        raise SparsifyError(f"{type(model).__name__} has no linear layers (nn.Linear or Conv1D) in its blocks: "
                            "nothing to sparsify; give a decoder-only transformer")
    widths = sorted({rows_by_output(m).shape[1] for m in layers.values()} if pattern else set())
    if pattern and any(width % pattern[1] for width in widths):
        raise SparsifyError(f"--pattern {pattern[0]}:{pattern[1]} needs layer input widths divisible by {pattern[1]}, "
                            f"got {widths}: choose M dividing all of them (e.g. 2:4)")
    if method == "magnitude":
        for module in layers.values():
            weight = rows_by_output(module)  # N:M groups run along each output row's inputs
            weight[prune_mask(weight.abs().float(), sparsity, pattern, per_row=False)] = 0
    else:
        _sparsify_with_llmcompressor(model, method, sparsity, pattern, blocks)
    return {name: float((module.weight.data == 0).float().mean()) for name, module in layers.items()}


@contextmanager
def conv1d_as_linear(model):
    """Swap the blocks' Conv1D layers for equal nn.Linear layers (weight transposed) for the duration, then
    copy the result back into the Conv1D weights: the checkpoint stays a normal GPT-2 checkpoint.

    llm-compressor 0.14 cannot prune Conv1D (measured on GPT-2: 0 weights zeroed, no error, with its default
    targets and with targets=["Conv1D"]): its sparsity code transposes Conv1D, but it hooks only modules named
    Linear/Conv1d/Conv2d/Conv3d (sgpt_base.PRUNABLE_LAYER_TYPES; Conv1d is torch's, not transformers' Conv1D).
    """
    swapped = {}
    for name, module in block_linear_layers(model).items():
        if isinstance(module, Conv1D):
            linear = nn.Linear(module.nx, module.nf, dtype=module.weight.dtype, device=module.weight.device)
            linear.weight.data.copy_(module.weight.data.t())
            linear.bias.data.copy_(module.bias.data)
            model.set_submodule(name, linear)
            swapped[name] = (module, linear)
    try:
        yield
    finally:
        for name, (conv, linear) in swapped.items():
            conv.weight.data.copy_(linear.weight.data.t())
            conv.bias.data.copy_(linear.bias.data)
            model.set_submodule(name, conv)


def _sparsify_with_llmcompressor(model, method, sparsity, pattern, blocks) -> None:
    with conv1d_as_linear(model):
        _oneshot(model, method, sparsity, pattern, blocks)


def _oneshot(model, method, sparsity, pattern, blocks) -> None:
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.obcq import SparseGPTModifier
    from llmcompressor.modifiers.pruning import WandaPruningModifier

    modifier = {"wanda": WandaPruningModifier, "sparsegpt": SparseGPTModifier}[method]
    structure = f"{pattern[0]}:{pattern[1]}" if pattern else "0:0"
    # the LM head stays dense (it is tied to the embeddings in most small models)
    recipe = modifier(sparsity=1 - pattern[0] / pattern[1] if pattern else sparsity, mask_structure=structure,
                      ignore=["re:.*lm_head"])  # a plain "lm_head" is not matched (measured: it was pruned)
    dataset = Dataset.from_dict({"input_ids": blocks.tolist(), "attention_mask": torch.ones_like(blocks).tolist()})
    oneshot(model=model, recipe=recipe, dataset=dataset, max_seq_length=blocks.shape[1],
            num_calibration_samples=len(blocks))


def build_parser() -> argparse.ArgumentParser:
    from compressors.output import add_model_and_output_arguments
    from compressors.text_data import add_calibration_arguments

    parser = argparse.ArgumentParser(
        prog="compfair compress sparsify",
        description="One-shot weight sparsity (magnitude, Wanda, SparseGPT) of the linear layers; the output "
                    "is a plain transformers checkpoint (`lm_eval --model hf --model_args pretrained=<output>`).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_and_output_arguments(parser, "sparse")
    parser.add_argument("--method", choices=METHODS, default="wanda",
                        help="magnitude: smallest |w| per layer; wanda: |w| x input norm; sparsegpt: OBS updates")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--sparsity", type=options.fraction_open, default=None,
                        help="fraction of each layer's weights zeroed, in (0, 1) (default 0.5 when no --pattern)")
    target.add_argument("--pattern", type=options.checked(check_pattern), default=None,
                        help="N:M semi-structured sparsity, e.g. 2:4")
    add_calibration_arguments(parser, "wanda/sparsegpt")
    parser.add_argument("--seed", type=options.seed, default=0, help="seed of the calibration text sample")
    return parser


def check_pattern(text: str) -> str:
    parse_pattern(text)
    return text


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # bad values exit 2 here, before any model loads
    pattern = parse_pattern(args.pattern)
    sparsity = None if pattern else (0.5 if args.sparsity is None else args.sparsity)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from compfair_tasks.models import load_model_config, resolve_model
    from compressors.metadata import write_compression_metadata
    from compressors.output import prepare_output, staged_output
    from compressors.text_data import calibration_blocks, check_context
    from compressors.verify import changed_tensors, measure_weights, output_checks, refuse_unchanged

    source = resolve_model(args.model)  # bad input raises a CompfairError: the CLI prints it and exits 2
    config = load_model_config(args.model)
    if args.method in NEEDS_DATA:
        check_context(args.block_size, config)
    prepare_output(args.output, sources=[args.model, source], overwrite=args.overwrite)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(source)
    blocks = calibration_blocks(args, tokenizer) if args.method in NEEDS_DATA else None  # bad --data: before the model
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    reference = copy.deepcopy(model)
    zeroed = sparsify_model(model, args.method, sparsity, pattern, blocks)  # a SparsifyError: the CLI exits 2
    refuse_unchanged("compfair compress sparsify", layers_changed=changed_tensors(model, reference),
                     fix="its linear layers were left as they were: please report it with the command")
    seconds = time.perf_counter() - started
    output = Path(args.output)
    with staged_output(output, overwrite=args.overwrite, writer="compfair compress sparsify") as staged:
        model.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
        checks = output_checks(AutoModelForCausalLM.from_pretrained(staged).eval(), tokenizer, reference,
                               REFERENCE_TOL, f"{args.method} vs dense source")
        measured = measure_weights(staged, source if Path(source).is_dir() else None)
        refuse_unchanged("compfair compress sparsify", equal_to_source=measured["equal_to_source"])
        target = f"{args.pattern}" if pattern else f"{sparsity:.0%}"
        write_compression_metadata(
            staged, method=f"sparsify_{args.method}", source_model=args.model, seed=args.seed, model=model,
            settings={"method": args.method, "sparsity": sparsity, "pattern": args.pattern,
                      "data": args.data or ("bold_wiki" if blocks is not None else None),
                      "calibration_blocks": None if blocks is None else list(blocks.shape)},
            extra={"measured": measured, "seconds": round(seconds, 1), "layers": len(zeroed), "checks": checks})
    print(f"saved {output}: {args.method} {target} on {len(zeroed)} linear layers in {seconds:.0f} s; measured "
          f"sparsity {measured['sparsity']:.3f}, {measured['bytes'] / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
