"""Latency of a head-pruned and an int8 GPT-2-small-shaped model next to the unpruned fp32 one.

Random weights (speed does not depend on them), measured side by side in one run: the models take
turns, and each ratio is of medians. The FLOP-ideal speedup of pruning counts the multiply-adds of
a forward pass (projections, attention scores and mixing, MLP, LM head); pruning keeps
head_dim, so only attention shrinks. Prints achieved / ideal, the issue's target being >= 0.9.

    python benchmarks/pruned_speed.py                 # GPT-2 small shape, 15% of heads removed
    python benchmarks/pruned_speed.py --quick         # 4 layers, for a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from compressors.prune import keep_heads
from compressors.quantize import quantize_model


def forward_flops(config, heads_per_layer: list[int], batch: int, tokens: int) -> float:
    """Multiply-adds x 2 of one GPT-2 forward pass with the given heads per layer."""
    embed, head_dim = config.n_embd, config.n_embd // config.n_head
    inner = config.n_inner or 4 * embed
    flops = 0.0
    for heads in heads_per_layer:
        width = heads * head_dim
        flops += 2 * tokens * embed * 3 * width  # q, k, v projection
        flops += 2 * 2 * tokens * tokens * width  # scores and weighted values
        flops += 2 * tokens * width * embed  # output projection
        flops += 2 * 2 * tokens * embed * inner  # MLP
    flops += 2 * tokens * embed * config.vocab_size  # LM head
    return batch * flops


def evenly_removed(n_layer: int, n_head: int, fraction: float, seed: int = 0) -> list[list[int]]:
    """Heads to keep: `fraction` of all heads removed at random, at least one left per layer."""
    generator = torch.Generator().manual_seed(seed)
    all_heads = [(layer, head) for layer in range(n_layer) for head in range(n_head)]
    order = torch.randperm(len(all_heads), generator=generator).tolist()
    keep = [set(range(n_head)) for _ in range(n_layer)]
    to_remove = round(fraction * len(all_heads))
    for index in order:
        layer, head = all_heads[index]
        if to_remove and len(keep[layer]) > 1:
            keep[layer].discard(head)
            to_remove -= 1
    return [sorted(k) for k in keep]


def side_by_side(models: dict, input_ids: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median forward seconds of each model, the models taking turns after one warm-up each."""
    times = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            model(input_ids=input_ids, use_cache=False)
        for _ in range(repeats):
            for name, model in models.items():
                start = time.perf_counter()
                model(input_ids=input_ids, use_cache=False)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--embed", type=int, default=768)
    parser.add_argument("--removed", type=float, default=0.15, help="fraction of heads removed (paper: ~15%%)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="4 layers, 3 repeats")
    args = parser.parse_args()
    if args.quick:
        args.layers, args.repeats = 4, 3
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    config = GPT2Config(n_layer=args.layers, n_head=args.heads, n_embd=args.embed, vocab_size=50257)
    full = GPT2LMHeadModel(config).eval()
    keep = evenly_removed(args.layers, args.heads, args.removed)
    pruned = keep_heads(full, keep)
    int8_model = GPT2LMHeadModel(config).eval()
    int8_model.load_state_dict(full.state_dict())
    quantize_model(int8_model, "dynamic")
    input_ids = torch.randint(0, config.vocab_size, (args.batch, args.tokens))

    seconds = side_by_side({"fp32": full, "pruned": pruned, "int8": int8_model}, input_ids, args.repeats)
    heads_left = [len(k) for k in keep]
    ideal = forward_flops(config, [args.heads] * args.layers, args.batch, args.tokens) / forward_flops(
        config, heads_left, args.batch, args.tokens)
    achieved = seconds["fp32"] / seconds["pruned"]
    print(f"GPT-2 shape: {args.layers} layers x {args.heads} heads, n_embd {args.embed}; "
          f"batch {args.batch} x {args.tokens} tokens; threads {torch.get_num_threads()}; {args.repeats} repeats")
    print(f"heads kept: {sum(heads_left)} of {args.layers * args.heads}")
    for name, value in seconds.items():
        print(f"  {name:<7} {value * 1e3:8.1f} ms")
    print(f"pruned speedup x{achieved:.3f}; FLOP-ideal x{ideal:.3f}; achieved/ideal {achieved / ideal:.3f} "
          f"({'never slower' if achieved >= 1 else 'SLOWER than unpruned'})")
    print(f"int8 (dynamic) speedup over fp32 x{seconds['fp32'] / seconds['int8']:.3f}")


if __name__ == "__main__":
    main()
