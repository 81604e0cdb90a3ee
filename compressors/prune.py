"""`compfair compress prune`: remove attention heads by gradient importance (Michel et al., 2019).

Each head h gets a gate g_h multiplying its output (a forward pre-hook on the output projection
scales the head's head_dim slice of its input). The importance of h is E_x |dL(x)/dg_h| at g = 1,
with L(x) the mean next-token loss of one example x, as in Michel et al. The gates have one row
per example, so a single backward pass per batch gives every example's own gradient. Scores are
L2-normalised within each layer (Michel et al.; `--normalize global` divides by the norm over all
heads instead, which ranks heads by their raw scores). Each iteration removes the lowest-scoring
`--ratio` of the remaining heads (never a layer's last one unless `--allow-empty-layers`),
physically, then scores the smaller model again.

Physical removal slices each removed head's columns out of the q, k and v projections and its
rows out of the output projection and saves a checkpoint whose config records the per-layer head
counts (compressors/pruned_gpt2.py, compressors/pruned_llama.py). transformers 5 dropped
`head_mask` and `prune_heads`, hence the hooks and the slicing here.

Why not torch-pruning (1.6.1, tried on a transformers-5 GPT-2): `DependencyGraph.build_dependency`
traces the model (0.5 s) but transformers' `Conv1D` is not a graph node (its pruner falls back to
ElementWisePruner), and `get_pruning_group(c_proj, prune_linear_in_channels, ...)` raises "Module
Conv1D(nf=32, nx=32) is not in the dependency graph". So it cannot couple one head's q, k and v
column blocks in the fused `c_attn` with its `c_proj` rows; a custom pruner would be this slicing
written in its API. Llama's heads would be in reach of its attention-head mode, but not pruning
query heads within grouped key/value heads to unequal group sizes. The slicing is a few lines per
architecture, tested against the gated model.

Grouped key/value attention (Llama family, e.g. SmolLM2-135M): `--unit head` (default) prunes query
heads within their groups (a group whose last query head goes loses its key/value head too);
`--unit group` scores and removes whole key/value groups (gate = all its query heads at once).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from compfair_tasks import options
from compfair_tasks.errors import CompfairError

SUPPORTED = "gpt2 (GPT-2 and DistilGPT-2 checkpoints) and llama (Llama-family with grouped key/value heads, e.g. SmolLM2)"


class UnsupportedArchitectureError(CompfairError, ValueError):
    pass


# --------------------------------------------------------------------------- architectures


@dataclass
class AttentionLayer:
    out_proj: torch.nn.Module  # the module whose input holds the heads' outputs side by side
    head_dim: int
    num_heads: int  # real heads
    group_of_head: list[int]  # key/value group of each query head (each head its own for GPT-2)
    stored_slots: list[int | None]  # real head held by each stored head of out_proj's input (None: zero pad)


def family(model) -> str:
    model_type = getattr(model.config, "model_type", None)
    if model_type in ("gpt2", "pruned_gpt2"):
        return "gpt2"
    if model_type in ("llama", "pruned_llama"):
        return "llama"
    raise UnsupportedArchitectureError(
        f"head pruning does not support model_type {model_type!r}; supported: {SUPPORTED}")


def attention_layers(model) -> list[AttentionLayer]:
    if family(model) == "gpt2":
        from compressors.pruned_gpt2 import physical_heads

        head_dim = model.config.n_embd // model.config.n_head
        counts = getattr(model.config, "heads_per_layer", None) or [model.config.n_head] * model.config.n_layer
        return [AttentionLayer(block.attn.c_proj, head_dim, heads, list(range(heads)),
                               [h if h < heads else None for h in range(physical_heads(heads))])
                for block, heads in zip(model.transformer.h, counts)]
    from compressors.pruned_llama import current_groups, stored_query_slots

    head_dim = model.model.layers[0].self_attn.head_dim
    return [
        AttentionLayer(layer.self_attn.o_proj, head_dim, sum(groups),
                       [g for g, size in enumerate(groups) for _ in range(size)], slots)
        for layer, groups, slots in zip(model.model.layers, current_groups(model), stored_query_slots(model))
    ]


def keep_heads(model, keep: list[list[int]]):
    """A new, physically smaller model with only heads keep[i] of layer i (indices into its current heads)."""
    if family(model) == "gpt2":
        from compressors.pruned_gpt2 import keep_heads as keep_gpt2

        return keep_gpt2(model, [sorted(k) for k in keep])
    from compressors.pruned_llama import keep_heads as keep_llama

    return keep_llama(model, [sorted(k) for k in keep])


def units_of_layer(layer: AttentionLayer, unit: str) -> list[int]:
    """Pruning unit of each query head: itself ("head") or its key/value group ("group")."""
    return list(range(layer.num_heads)) if unit == "head" else layer.group_of_head


# --------------------------------------------------------------------------- gates and importance


@contextlib.contextmanager
def gated(model, gates: list[torch.Tensor]):
    """Multiply each real head's output by gates[layer][example, head] (shape [batch or 1, real heads]).

    Zero pads of a stored layout (compressors/pruned_llama.py) output zeros whatever their gate (1 here).
    """
    handles = []
    for layer, gate in zip(attention_layers(model), gates):
        if layer.num_heads == 0:
            continue
        slots = torch.tensor([layer.num_heads if h is None else h for h in layer.stored_slots], device=gate.device)

        def scale_heads(_module, args, gate=gate, slots=slots, head_dim=layer.head_dim):
            stored = torch.cat([gate, gate.new_ones(len(gate), 1)], 1)[:, slots]  # [batch, stored heads]
            heads = args[0].unflatten(-1, (-1, head_dim))  # [batch, seq, stored heads, head_dim]
            return (heads * stored[:, None, :, None].to(heads.dtype)).flatten(-2), *args[1:]

        handles.append(layer.out_proj.register_forward_pre_hook(scale_heads))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def example_losses(model, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss of each row of `input_ids` (shape [batch])."""
    logits = model(input_ids=input_ids, use_cache=False).logits[:, :-1]
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    targets = input_ids[:, 1:]
    losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    return losses.view(targets.shape).mean(dim=1)


def head_importance(model, blocks: torch.Tensor, batch_size: int = 8, unit: str = "head",
                    progress: str | None = None) -> list[torch.Tensor]:
    """Per layer, E_x |dL(x)/dg_u| for each pruning unit u (a head, or a key/value group of heads)."""
    layers = attention_layers(model)
    unit_index = [torch.tensor(units_of_layer(layer, unit), dtype=torch.long) for layer in layers]
    n_units = [int(index.max()) + 1 if len(index) else 0 for index in unit_index]
    totals = [torch.zeros(n, dtype=torch.float64) for n in n_units]
    was_training = model.training
    requires_grad = [p.requires_grad for p in model.parameters()]
    model.eval().requires_grad_(False)
    try:
        from tqdm.auto import tqdm

        for batch in tqdm(blocks.split(batch_size), desc=progress, unit="batch", leave=False, disable=progress is None):
            batch = batch.to(model.device)
            gates = [torch.ones(len(batch), layer.num_heads, device=model.device, requires_grad=True) for layer in layers]
            with gated(model, gates):
                example_losses(model, batch).sum().backward()  # row b of each gate's grad: dL(x_b)/dg
            for total, gate, index, n in zip(totals, gates, unit_index, n_units):
                if n:
                    per_unit = torch.zeros(len(batch), n, dtype=torch.float64).index_add_(1, index, gate.grad.detach().double().cpu())
                    total += per_unit.abs().sum(dim=0)
    finally:
        for parameter, flag in zip(model.parameters(), requires_grad):
            parameter.requires_grad_(flag)
        model.train(was_training)
    return [total / len(blocks) for total in totals]


def normalize(scores: list[torch.Tensor], how: str = "layer") -> list[torch.Tensor]:
    """Divide by the L2 norm of each layer's scores ("layer", Michel et al.) or of all scores ("global")."""
    if how == "none":
        return [s.clone() for s in scores]
    if how == "layer":
        return [s / (s.norm() + 1e-20) for s in scores]
    if how == "global":
        norm = torch.cat(scores).norm() + 1e-20
        return [s / norm for s in scores]
    raise ValueError(f"normalize must be 'layer', 'global' or 'none', got {how!r}")


# --------------------------------------------------------------------------- schedule


def count_to_remove(remaining: int, ratio: float) -> int:
    """Units one iteration removes: ratio of the remaining ones, rounded half up, at least one."""
    return max(1, math.floor(ratio * remaining + 0.5))


def lowest_units(scores: list[torch.Tensor], count: int, allow_empty_layers: bool = False) -> dict[int, list[int]]:
    """The `count` lowest-scoring units, {layer: [unit, ...]}, leaving each layer one unless allowed."""
    left = {layer: len(s) for layer, s in enumerate(scores)}
    ranked = sorted((float(value), layer, unit) for layer, s in enumerate(scores) for unit, value in enumerate(s))
    chosen: dict[int, list[int]] = {}
    for _, layer, unit in ranked:
        if sum(len(units) for units in chosen.values()) == count:
            break
        if left[layer] <= 1 and not allow_empty_layers:
            continue
        chosen.setdefault(layer, []).append(unit)
        left[layer] -= 1
    return {layer: sorted(units) for layer, units in sorted(chosen.items())}


def remove_units(model, remove: dict[int, list[int]], unit: str = "head"):
    """The model without the given units; returns (new model, removed head indices per layer)."""
    keep, removed_heads = [], {}
    for index, layer in enumerate(attention_layers(model)):
        gone = set(remove.get(index, ()))
        units = units_of_layer(layer, unit)
        keep.append([h for h in range(layer.num_heads) if units[h] not in gone])
        removed_heads[index] = [h for h in range(layer.num_heads) if units[h] in gone]
    return keep_heads(model, keep), removed_heads


@dataclass
class PruneResult:
    model: object
    iterations: list[dict] = field(default_factory=list)
    removed: dict[int, list[int]] = field(default_factory=dict)  # original head indices, per layer


def prune_iteratively(model, blocks: torch.Tensor, iterations: int = 3, ratio: float = 0.05, unit: str = "head",
                      normalization: str = "layer", batch_size: int = 8, allow_empty_layers: bool = False,
                      log=print, progress: bool = False) -> PruneResult:
    check_settings(ratio, iterations, unit, model)
    original = [list(range(layer.num_heads)) for layer in attention_layers(model)]  # original index of each head
    result = PruneResult(model)
    for iteration in range(1, iterations + 1):
        started = time.perf_counter()
        raw = head_importance(result.model, blocks, batch_size=batch_size, unit=unit,
                              progress=f"iteration {iteration}/{iterations}: scoring" if progress else None)
        scores = normalize(raw, normalization)
        remaining = sum(len(s) for s in scores)
        remove = lowest_units(scores, count_to_remove(remaining, ratio), allow_empty_layers)
        result.model, removed_now = remove_units(result.model, remove, unit)
        removed_original = {}
        for layer, heads in removed_now.items():
            if heads:
                removed_original[layer] = [original[layer][h] for h in heads]
                result.removed.setdefault(layer, []).extend(removed_original[layer])
            original[layer] = [o for h, o in enumerate(original[layer]) if h not in set(heads)]
        heads_left = sum(len(o) for o in original)
        result.iterations.append({
            "iteration": iteration, f"{unit}s_before": remaining,
            f"{unit}s_removed": sum(len(u) for u in remove.values()), "heads_left": heads_left,
            "removed_heads": {str(k): v for k, v in removed_original.items()},
            "importance": [[round(float(x), 6) for x in s] for s in scores],
            "importance_raw": [[float(x) for x in s] for s in raw],
            "seconds": round(time.perf_counter() - started, 2),
        })
        log(f"iteration {iteration}: removed {result.iterations[-1][f'{unit}s_removed']} of {remaining} {unit}s, "
            f"{heads_left} heads left ({time.perf_counter() - started:.1f}s)")
    result.removed = {layer: sorted(heads) for layer, heads in sorted(result.removed.items())}
    return result


def check_settings(ratio: float, iterations: int, unit: str, model) -> None:
    if not 0 < ratio < 1:
        raise ValueError(f"--ratio is the fraction of remaining heads removed per iteration: it must be in (0, 1), "
                         f"got {ratio} (the paper used 0.05)")
    if iterations < 1:
        raise ValueError(f"--iterations must be at least 1, got {iterations}")
    if unit not in ("head", "group"):
        raise ValueError(f"--unit must be 'head' or 'group', got {unit!r}")
    if unit == "group" and model is not None and family(model) != "llama":
        raise ValueError("--unit group needs grouped key/value attention (llama family); GPT-2 has one group per head")


# --------------------------------------------------------------------------- command line


def load_blocks(sources: list[str] | None, tokenizer, num_examples: int | None, block_size: int, seed: int,
                min_blocks: int = 1) -> tuple[torch.Tensor, int]:
    """Token blocks from `num_examples` texts (seeded sample) of the given sources; and the texts' count."""
    from compressors.text_data import load_texts, pack_blocks

    texts = [text for source in (sources or [None]) for text in load_texts(source, seed=seed)]
    if num_examples is not None and num_examples < len(texts):
        texts = random.Random(seed).sample(texts, num_examples)
    try:
        blocks = pack_blocks(texts, tokenizer, block_size)
    except ValueError as error:
        raise ValueError(f"too little text to score heads: {error} (use more --num-examples or a smaller "
                         f"--block-size)") from error
    if len(blocks) < min_blocks:
        raise ValueError(f"too little text to score heads: {len(texts)} texts make {len(blocks)} blocks of "
                         f"{block_size} tokens, fewer than --min-blocks {min_blocks}; use more --num-examples "
                         "or a smaller --block-size")
    return blocks, len(texts)


def build_parser() -> argparse.ArgumentParser:
    from compressors.output import add_model_and_output_arguments
    from compressors.text_data import MAX_BLOCK_TOKENS

    parser = argparse.ArgumentParser(
        prog="compfair compress prune", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Remove attention heads by gradient importance (Michel et al. 2019) and save a smaller "
                    "checkpoint that AutoModelForCausalLM and `lm_eval --model hf` load.")
    add_model_and_output_arguments(parser, "pruned", "the GPT-2 or Llama family")
    parser.add_argument("--data", nargs="*", default=None,
                        help="text for the importance scores: .txt/.jsonl files or folders, or a hub id "
                             "(e.g. wikitext:wikitext-103-raw-v1); default: the shipped BOLD Wikipedia sentences")
    parser.add_argument("--num-examples", type=options.nonnegative_int, default=256,
                        help="texts sampled from --data (the paper: 256, 1280, 2560, 5120, 12800); 0 = all")
    parser.add_argument("--block-size", type=options.int_range(2, MAX_BLOCK_TOKENS), default=128,
                        help="tokens per scored block (texts are packed; at most the model's context length)")
    parser.add_argument("--min-blocks", type=options.positive_int, default=4, help="refuse to score heads on fewer blocks")
    parser.add_argument("--iterations", type=options.positive_int, default=3, help="score-and-remove rounds")
    parser.add_argument("--ratio", type=options.fraction_open, default=0.05,
                        help="fraction of remaining heads removed per iteration, in (0, 1)")
    parser.add_argument("--unit", choices=("head", "group"), default="head",
                        help="grouped-KV models: prune query heads within groups, or whole key/value groups")
    parser.add_argument("--normalize", choices=("layer", "global", "none"), default="layer",
                        help="L2-normalise scores within each layer (Michel et al.) or over all heads")
    parser.add_argument("--allow-empty-layers", action="store_true", help="may remove a layer's last head")
    parser.add_argument("--batch-size", type=options.positive_int, default=8, help="blocks per backward pass while scoring")
    parser.add_argument("--device", type=options.device, default="cpu", help="torch device for scoring (cpu, cuda, ...)")
    parser.add_argument("--seed", type=options.seed, default=0, help="seed of the text sample")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from compfair_tasks.models import load_model_config, resolve_model
    from compressors.checks import check_compressed
    from compressors.metadata import count_parameters, write_compression_metadata
    from compressors.output import prepare_output, staged_output
    from compressors.text_data import check_context
    from compressors.verify import refuse_unchanged

    torch.manual_seed(args.seed)
    try:
        check_settings(args.ratio, args.iterations, args.unit, model=None)  # before the slow model load
        source = resolve_model(args.model)
        check_context(args.block_size, load_model_config(args.model))
        prepare_output(args.output, sources=[args.model, source], overwrite=args.overwrite)
        model = AutoModelForCausalLM.from_pretrained(source, dtype="auto").to(args.device)
        family(model)
        check_settings(args.ratio, args.iterations, args.unit, model)
        tokenizer = AutoTokenizer.from_pretrained(source)
        blocks, n_texts = load_blocks(args.data, tokenizer, args.num_examples or None, args.block_size, args.seed,
                                      args.min_blocks)
    except (ValueError, FileNotFoundError) as error:
        print(f"compfair compress prune: error: {error}", file=sys.stderr)
        return 2
    heads_before = sum(layer.num_heads for layer in attention_layers(model))
    print(f"scoring {heads_before} heads on {len(blocks)} blocks of {args.block_size} tokens from {n_texts} texts")
    result = prune_iteratively(model, blocks, args.iterations, args.ratio, args.unit, args.normalize,
                               args.batch_size, args.allow_empty_layers, progress=True)
    refuse_unchanged("compfair compress prune", layers_changed=sum(1 for heads in result.removed.values() if heads),
                     fix="every layer is down to its last head: pass --allow-empty-layers to remove those too")
    check_compressed(result.model, tokenizer, reference=gated_reference(model, result.removed),
                     reference_tol=1e-4, label="pruned vs gated teacher")  # float32: ~1e-6 measured
    heads_left = [layer.num_heads for layer in attention_layers(result.model)]
    with staged_output(args.output, overwrite=args.overwrite, writer="compfair compress prune") as staged:
        save_pruned(result.model, tokenizer, staged)
        record = write_compression_metadata(
            staged, method="prune_heads", source_model=args.model, seed=args.seed, model=result.model,
            settings={"iterations": args.iterations, "ratio": args.ratio, "unit": args.unit,
                      "normalize": args.normalize, "allow_empty_layers": args.allow_empty_layers,
                      "data": args.data or ["bold_wiki"], "num_examples": n_texts, "block_size": args.block_size,
                      "blocks": len(blocks), "importance": "E_x |dL(x)/dg_h| (Michel et al. 2019)"},
            removed={"heads": {str(layer): heads for layer, heads in result.removed.items()}},
            extra={"heads_before": heads_before, "heads_after": sum(heads_left), "heads_per_layer": heads_left,
                   "source_params": count_parameters(model), "iterations": result.iterations},
        )
    print(f"saved {args.output}: {heads_before} -> {sum(heads_left)} heads, "
          f"{record['source_params']:,} -> {record['params']:,} parameters")
    return 0


def gated_reference(model, removed: dict[int, list[int]]):
    """Logits of `model` with heads `removed[layer]` gated to zero: what the pruned model must reproduce."""
    def logits(input_ids):
        gates = []
        for index, layer in enumerate(attention_layers(model)):
            gate = torch.ones(1, layer.num_heads, device=input_ids.device)
            gate[0, removed.get(index, [])] = 0
            gates.append(gate)
        with torch.no_grad(), gated(model, gates):
            return model(input_ids, use_cache=False).logits
    return logits


def save_pruned(model, tokenizer, output_dir) -> None:
    """save_pretrained with the model's code beside it (auto_map), so trust_remote_code loads it anywhere."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    type(model.config).register_for_auto_class("AutoConfig")
    type(model).register_for_auto_class("AutoModelForCausalLM")
    model.save_pretrained(output_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(output_dir)


if __name__ == "__main__":
    sys.exit(main())
