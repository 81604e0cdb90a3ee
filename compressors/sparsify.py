"""`compfair compress sparsify`: one-shot weight sparsity of a causal LM's linear layers (CPU).

Methods (as in Decoding Compressed Trust, Hong et al. 2024, and Wanda, Sun et al. 2024):

- `magnitude`: zero the smallest |w| of each linear layer (no data).
- `wanda`: zero the smallest |w_ij| * ||x_j||_2 within each output row, x the layer's input on
  calibration text (Sun et al. 2024).
- `sparsegpt`: the OBS-style pruning with Hessian-based weight updates of Frantar & Alistarh (2023).

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
from pathlib import Path

import torch
from torch import nn

METHODS = ("magnitude", "wanda", "sparsegpt")
NEEDS_DATA = ("wanda", "sparsegpt")


class SparsifyError(ValueError):
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


def block_linear_layers(model) -> dict[str, nn.Linear]:
    """The nn.Linear layers of the transformer blocks (not the LM head)."""
    return {name: module for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and name != "lm_head" and not name.endswith(".lm_head")}


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


@torch.no_grad()
def input_statistics(model, layers: dict[str, nn.Linear], blocks: torch.Tensor, batch_size: int = 4,
                     hessian: bool = False) -> dict[str, torch.Tensor]:
    """Per layer: the sum over calibration tokens of x_j^2 (Wanda) or of x x^T (SparseGPT's Hessian)."""
    stats: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(_module, inputs, _output):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float()
            value = x.T @ x if hessian else (x * x).sum(dim=0)
            stats[name] = stats[name] + value if name in stats else value
        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in layers.items()]
    try:
        for start in range(0, len(blocks), batch_size):
            model(blocks[start: start + batch_size])
    finally:
        for handle in handles:
            handle.remove()
    return stats


@torch.no_grad()
def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float | None,
                    pattern: tuple[int, int] | None, block: int = 128, damp: float = 0.01) -> torch.Tensor:
    """SparseGPT (Frantar & Alistarh 2023, Alg. 1): prune columns left to right, each pruned weight's
    error spread over the not-yet-processed columns through the inverse Hessian's Cholesky factor."""
    W = weight.detach().float().clone()
    H = hessian.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += damp * torch.diag(H).mean() * torch.eye(H.shape[0])
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    cols = W.shape[1]
    for start in range(0, cols, block):
        end = min(start + block, cols)
        W1, Hinv1 = W[:, start:end].clone(), Hinv[start:end, start:end]
        Err1 = torch.zeros_like(W1)
        scores = W1 ** 2 / torch.diag(Hinv1).reshape(1, -1) ** 2
        # unstructured: the lowest scores of the whole column block (the paper's adaptive mask selection)
        mask1 = torch.zeros_like(W1, dtype=torch.bool) if pattern else prune_mask(scores, sparsity, None, False)
        for i in range(end - start):
            w, d = W1[:, i], Hinv1[i, i]
            if pattern and i % pattern[1] == 0:  # n:m: choose each group's survivors on the updated weights
                group = W1[:, i: i + pattern[1]] ** 2 / torch.diag(Hinv1)[i: i + pattern[1]].reshape(1, -1) ** 2
                mask1[:, i: i + pattern[1]] = prune_mask(group, None, pattern, per_row=True)
            q = w.clone()
            q[mask1[:, i]] = 0
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            W1[:, i] = q
            Err1[:, i] = err
        W[:, start:end] = W1
        W[:, end:] -= Err1 @ Hinv[start:end, end:]
    return W.to(weight.dtype)


def sparsify_model(model, method: str, sparsity: float | None = 0.5, pattern: tuple[int, int] | None = None,
                   blocks: torch.Tensor | None = None, batch_size: int = 4) -> dict[str, float]:
    """Zero weights of every block linear layer in place; returns {layer: fraction zeroed}."""
    if method not in METHODS:
        raise SparsifyError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if method in NEEDS_DATA and blocks is None:
        raise SparsifyError(f"{method} needs calibration text (blocks of token ids)")
    layers = block_linear_layers(model)
    stats = {} if method == "magnitude" else input_statistics(model, layers, blocks, batch_size,
                                                              hessian=method == "sparsegpt")
    done = {}
    for name, module in layers.items():
        weight = module.weight.data
        if method == "sparsegpt":
            module.weight.data = sparsegpt_prune(weight, stats[name], sparsity, pattern)
        else:
            scores = weight.abs().float()
            if method == "wanda":
                scores = scores * stats[name].sqrt().reshape(1, -1)
            # Wanda compares within each output row (its paper, section 3); magnitude within the layer
            weight[prune_mask(scores, sparsity, pattern, per_row=method == "wanda")] = 0
        done[name] = float((module.weight.data == 0).float().mean())
    return done


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compfair compress sparsify",
        description="One-shot weight sparsity (magnitude, Wanda, SparseGPT) of the linear layers; the output "
                    "is a plain transformers checkpoint (`lm_eval --model hf --model_args pretrained=<output>`).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint folder or hub id of a causal LM")
    parser.add_argument("--output", required=True, help="folder for the sparse checkpoint")
    parser.add_argument("--method", choices=METHODS, default="wanda")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--sparsity", type=float, default=None, help="fraction of each layer's weights zeroed "
                        "(default 0.5 when no --pattern)")
    target.add_argument("--pattern", default=None, help="N:M semi-structured sparsity, e.g. 2:4")
    parser.add_argument("--data", default=None, help="calibration text for wanda/sparsegpt: any source "
                        "compressors.text_data.load_texts takes (default: the shipped BOLD Wikipedia sentences)")
    parser.add_argument("--num-examples", type=int, default=128, help="calibration blocks")
    parser.add_argument("--block-size", type=int, default=256, help="tokens per calibration block")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        pattern = parse_pattern(args.pattern)
        sparsity = None if pattern else (0.5 if args.sparsity is None else args.sparsity)
        if sparsity is not None and not 0 < sparsity < 1:
            raise SparsifyError(f"--sparsity must be in (0, 1), got {sparsity}")
    except SparsifyError as error:
        print(f"compfair compress sparsify: {error}", file=sys.stderr)
        return 2
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from compressors.metadata import write_compression_metadata
    from compressors.text_data import load_texts, pack_blocks
    from compressors.verify import measure_weights, output_checks

    torch.manual_seed(args.seed)
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    reference = copy.deepcopy(model)
    blocks = None
    if args.method in NEEDS_DATA:
        blocks = pack_blocks(load_texts(args.data, seed=args.seed), tokenizer, args.block_size)[: args.num_examples]
    try:
        zeroed = sparsify_model(model, args.method, sparsity, pattern, blocks, args.batch_size)
    except SparsifyError as error:
        print(f"compfair compress sparsify: {error}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - started
    output = Path(args.output)
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    checks = output_checks(AutoModelForCausalLM.from_pretrained(output).eval(), tokenizer, reference)
    measured = measure_weights(output, args.model if Path(args.model).is_dir() else None)
    target = f"{args.pattern}" if pattern else f"{sparsity:.0%}"
    write_compression_metadata(
        output, method=f"sparsify_{args.method}", source_model=args.model, seed=args.seed, model=model,
        settings={"method": args.method, "sparsity": sparsity, "pattern": args.pattern,
                  "data": args.data or ("bold_wiki" if blocks is not None else None),
                  "calibration_blocks": None if blocks is None else list(blocks.shape)},
        extra={"measured": measured, "seconds": round(seconds, 1), "layers": len(zeroed), "checks": checks})
    print(f"saved {output}: {args.method} {target} on {len(zeroed)} linear layers in {seconds:.0f} s; measured "
          f"sparsity {measured['sparsity']:.3f}, {measured['bytes'] / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
