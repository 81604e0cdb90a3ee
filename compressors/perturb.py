"""`compfair compress perturb`: the model with seeded Gaussian noise added to its weights (a control, not a compressor).

A quality-degradation series made without compression: same architecture, same size, nothing removed or
rounded. It is the reference of the study report's quality-matched control (leaderboard/studies/control.py)
when a study has no uncompressed series: "compression made it fairer" is then told apart from "any loss of
LM ability makes it look fairer".

Scale: every floating-point weight tensor W with two or more dimensions (linear/Conv1D weights, embeddings,
an untied LM head) becomes W + scale * std(W) * Z, Z standard normal, std(W) the tensor's own standard
deviation; so `--scale 0.05` adds noise whose std is 5% of each tensor's spread, in every tensor alike.
1-D tensors (biases, norm gains) stay as they are: a norm gain of all ones has std 0, and a relative scale
means nothing there. Tied tensors are perturbed once (`named_parameters` lists them once). The noise is
drawn from one torch.Generator seeded with `--seed`, tensor after tensor in the model's parameter order,
so the same model, scale and seed give the same weights on any machine (CPU generator).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

from compfair_tasks import options
from compfair_tasks.errors import CompfairError

# compressors/checks.py bound on max |logits - source| / max |source logits|: noise at scale 1 (as much noise
# as signal) moves a tiny random GPT-2's logits by ~0.5; the bound catches NaN and garbage
REFERENCE_TOL = 10.0


class PerturbError(CompfairError, ValueError):
    """Bad settings, reported by the CLI in one line."""


def perturbed_tensors(model) -> dict[str, torch.nn.Parameter]:
    """The tensors the noise goes into: floating-point parameters with two or more dimensions."""
    return {name: p for name, p in model.named_parameters() if p.dim() >= 2 and p.is_floating_point()}


@torch.no_grad()
def perturb_model(model, scale: float, seed: int) -> dict[str, float]:
    """Add scale * std(W) * N(0, 1) to every tensor of `perturbed_tensors`, in place.

    Returns {tensor name: measured std(noise) / std(W)}, which equals `scale` up to sampling error.
    """
    if not scale > 0:
        raise PerturbError(f"--scale must be > 0 (the noise std relative to each weight tensor's std), got {scale}")
    generator = torch.Generator().manual_seed(seed)
    measured = {}
    for name, weight in perturbed_tensors(model).items():
        spread = weight.float().std()
        noise = torch.randn(weight.shape, generator=generator, dtype=torch.float32) * (scale * spread)
        weight.add_(noise.to(weight.dtype))
        measured[name] = float(noise.std() / spread) if spread > 0 else 0.0
    return measured


def build_parser() -> argparse.ArgumentParser:
    from compressors.output import add_model_and_output_arguments

    parser = argparse.ArgumentParser(
        prog="compfair compress perturb",
        description="Add seeded Gaussian noise (std = scale x each weight tensor's std) to every weight matrix: "
                    "a quality-degradation control with nothing removed. The output is a plain transformers "
                    "checkpoint (`lm_eval --model hf --model_args pretrained=<output>`).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_and_output_arguments(parser, "perturbed")
    parser.add_argument("--scale", type=options.float_range(0, 100, low_open=True), required=True,
                        help="noise std relative to each weight tensor's std (e.g. 0.01, 0.02, 0.05)")
    parser.add_argument("--seed", type=options.seed, default=0, help="seed of the noise")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # bad values exit 2 here, before any model loads
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from compfair_tasks.models import load_model_config, resolve_model
    from compressors.metadata import write_compression_metadata
    from compressors.output import prepare_output, staged_output
    from compressors.verify import output_checks

    source = resolve_model(args.model)  # bad input raises a CompfairError: the CLI prints it and exits 2
    load_model_config(args.model)
    prepare_output(args.output, sources=[args.model, source], overwrite=args.overwrite)
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    reference = copy.deepcopy(model)
    measured = perturb_model(model, args.scale, args.seed)
    seconds = time.perf_counter() - started
    output = Path(args.output)
    with staged_output(output, overwrite=args.overwrite, writer="compfair compress perturb") as staged:
        model.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
        reloaded = AutoModelForCausalLM.from_pretrained(staged).eval()
        checks = output_checks(reloaded, tokenizer, reference, REFERENCE_TOL, f"noise {args.scale} vs source")
        if not checks["reference_diff"] > 0:
            raise PerturbError("the perturbed model's logits equal the source's: no noise reached the weights "
                               "(a compfair bug: please report it with the command)")
        ratios = list(measured.values())
        write_compression_metadata(
            staged, method="noise", source_model=args.model, seed=args.seed, model=model,
            settings={"scale": args.scale, "seed": args.seed, "scale_relative_to": "each weight tensor's std",
                      "tensors": len(measured)},
            extra={"measured": {"relative_noise_std_mean": sum(ratios) / len(ratios),
                                "relative_noise_std_min": min(ratios), "relative_noise_std_max": max(ratios)},
                   "seconds": round(seconds, 1), "checks": checks})
    print(f"saved {output}: Gaussian noise at {args.scale} x std on {len(measured)} weight tensors (seed "
          f"{args.seed}); logits moved by {checks['reference_diff']:.2e} of their scale")
    return 0


if __name__ == "__main__":
    sys.exit(main())
