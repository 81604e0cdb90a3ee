"""`compfair demo`: the whole pipeline offline on the embedded default model, ending in a leaderboard.

Teacher = SmolLM2-135M (shipped on PyPI as GGUF). It is distilled, head-pruned and int8-quantized on
the shipped BOLD Wikipedia text, every model (plus Gemma-3-270M in the full run, where installed) is
evaluated with
the real `lm_eval` CLI on the shipped bias data, the offline toxicity prompts (profanity-check
scorer: Detoxify weights cannot be downloaded offline) and BOLD Wikipedia perplexity, and the
leaderboard is rendered. Each step is one command line, printed before it runs (compfair_tasks.runner);
a step already done with the same settings is skipped, so a crashed or interrupted demo resumes where it
stopped, and a step whose settings changed (another profile, --limit, task list) runs again.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from compfair_tasks.hub import OFFLINE_VARIABLES
from compfair_tasks.models import DEFAULT_MODEL, ModelNotAvailableError, embedded_model_dir
from compfair_tasks.runner import Step, StepError, lm_eval_command, run_steps

EVAL_TASKS = ["compfair_stereoset", "compfair_winobias", "compfair_crows_pairs",
              "compfair_toxicity_rtp_offline", "compfair_ppl_bold_wiki"]
# Detoxify's weights cannot be downloaded offline: the demo names the profanity-check scorer explicitly.
EVAL_METADATA = {"scorer": "profanity-check"}


@dataclass(frozen=True)
class Profile:
    limit: int  # examples per task
    distill_steps: int
    prune_examples: int
    prune_iterations: int
    full: bool  # also the second embedded model


PROFILES = {
    "quick": Profile(limit=10, distill_steps=3, prune_examples=32, prune_iterations=1, full=False),
    "default": Profile(limit=50, distill_steps=40, prune_examples=48, prune_iterations=3, full=True),
}


def _compfair(*args) -> list[str]:
    return [sys.executable, "-m", "compfair_tasks.cli", *map(str, args)]


def _lm_eval(model_dir: Path, out: Path, limit: int, model_type: str = "hf") -> list[str]:
    args = f"pretrained={model_dir}" + (",dtype=float32" if model_type == "hf" else "")
    return lm_eval_command(model=model_type, model_args=args, tasks=EVAL_TASKS, output_path=out, limit=limit,
                           batch_size=16, metadata=EVAL_METADATA, seed=0)


def plan(output: Path, teacher: Path, profile: Profile, second_model: Path | None) -> list[Step]:
    models, results = output / "models", output / "results"
    distilled, pruned, quantized = models / "distilled", models / "head-pruned", models / "int8"
    steps = [
        Step("distil a half-depth student", _compfair(
            "compress", "distill", "--teacher", teacher, "--num-layers", "15", "--max-steps", profile.distill_steps,
            "--batch-size", "2", "--block-size", "64", "--data-limit", "4000", "--eval-blocks", "4",
            "--output", distilled), distilled, inputs=(teacher,)),
        Step("prune attention heads", _compfair(
            "compress", "prune", "--model", teacher, "--num-examples", profile.prune_examples, "--block-size", "64",
            "--min-blocks", "8", "--iterations", profile.prune_iterations, "--output", pruned), pruned,
            inputs=(teacher,)),
        Step("quantize to int8", _compfair("compress", "quantize", "--model", teacher, "--output", quantized),
             quantized, inputs=(teacher,)),
    ]
    # int8 checkpoints have no transformers loader: compfair registers the lm_eval model type for them
    evaluated = [("teacher", teacher, "hf"), ("distilled", distilled, "hf"), ("head-pruned", pruned, "hf"),
                 ("int8", quantized, "compfair-quantized")]
    if second_model:
        evaluated.append(("gemma3-270m", second_model, "hf"))
    for name, model_dir, model_type in evaluated:
        steps.append(Step(f"evaluate {name}", _lm_eval(model_dir, results / name, profile.limit, model_type),
                          results / name, inputs=(model_dir,)))
    result_dirs = tuple(results / name for name, *_ in evaluated)
    steps.append(Step("render the leaderboard", _compfair("leaderboard", *result_dirs, "-o", output / "site"),
                      output / "site", inputs=result_dirs))
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compfair demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="10 examples per task, fewer training steps, 4 models instead of 5 (~3 min)")
    parser.add_argument("--output", type=Path, default=Path("compfair-demo"), help="folder for models, results, site")
    parser.add_argument("--limit", type=int, help="examples per task (default: 50, --quick: 10)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="embedded teacher model")
    parser.add_argument("--rerun", action="store_true",
                        help="run every step again, even those done with these settings")
    args = parser.parse_args(argv)
    profile = PROFILES["quick" if args.quick else "default"]
    if args.limit:
        profile = Profile(**{**profile.__dict__, "limit": args.limit})
    for variable in OFFLINE_VARIABLES:
        os.environ.setdefault(variable, "1")  # the demo never downloads anything

    started = time.monotonic()
    print(f"compfair demo ({'quick' if args.quick else 'default'}): output in {args.output.resolve()}", flush=True)
    print(f"[0 {0:6.0f}s] preparing the embedded teacher {args.model} (converted from GGUF once, then cached)")
    teacher = embedded_model_dir(args.model)
    second = None
    if profile.full:
        try:
            second = embedded_model_dir("gemma3-270m")
        except ModelNotAvailableError as error:
            print(f"    second model skipped: {error}")
    try:
        run_steps(plan(args.output.resolve(), teacher, profile, second), prog="compfair demo", rerun=args.rerun,
                  started=started)
    except StepError as error:
        raise SystemExit(str(error)) from None
    print(f"\ncompfair demo finished in {time.monotonic() - started:.0f} s. "
          f"Open {(args.output / 'site' / 'index.html').resolve()} in a browser.")
    return 0
