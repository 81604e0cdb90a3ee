"""`compfair demo`: the whole pipeline offline on the embedded default model, ending in a leaderboard.

Teacher = SmolLM2-135M (shipped on PyPI as GGUF). It is distilled, head-pruned and int8-quantized on
the shipped BOLD Wikipedia text, every model (plus Gemma-3-270M in the full run, where installed) is
evaluated with
the real `lm_eval` CLI on the shipped bias data, the offline toxicity prompts (profanity-check
scorer: Detoxify weights cannot be downloaded offline) and BOLD Wikipedia perplexity, and the
leaderboard is rendered. Each step is one command line, printed before it runs; a step whose output
already exists is skipped, so a crashed or interrupted demo resumes where it stopped.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from compfair_tasks.models import DEFAULT_MODEL, ModelNotAvailableError, embedded_model_dir

EVAL_TASKS = ["compfair_stereoset", "compfair_winobias", "compfair_crows_pairs",
              "compfair_toxicity_rtp_offline", "compfair_ppl_bold_wiki"]
# Detoxify's weights cannot be downloaded offline: the demo names the profanity-check scorer explicitly.
EVAL_METADATA = '{"scorer": "profanity-check"}'


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


@dataclass
class Step:
    title: str
    command: list[str]
    done_marker: Path  # the step is skipped when this exists
    env: dict = field(default_factory=dict)


def _compfair(*args) -> list[str]:
    return [sys.executable, "-m", "compfair_tasks.cli", *map(str, args)]


def _lm_eval(model_dir: Path, out: Path, limit: int, model_type: str = "hf") -> list[str]:
    args = f"pretrained={model_dir}" + (",dtype=float32" if model_type == "hf" else "")
    return [sys.executable, "-m", "lm_eval", "run", "--model", model_type, "--model_args", args,
            "--tasks", ",".join(EVAL_TASKS), "--limit", str(limit), "--batch_size", "16",
            "--metadata", EVAL_METADATA, "--log_samples", "--seed", "0", "--output_path", str(out)]


def plan(output: Path, teacher: Path, profile: Profile, second_model: Path | None) -> list[Step]:
    models, results = output / "models", output / "results"
    distilled, pruned, quantized = models / "distilled", models / "head-pruned", models / "int8"
    steps = [
        Step("distil a half-depth student", _compfair(
            "compress", "distill", "--teacher", teacher, "--num-layers", "15", "--max-steps", profile.distill_steps,
            "--batch-size", "2", "--block-size", "64", "--data-limit", "4000", "--eval-blocks", "4",
            "--output", distilled), distilled / "compfair_compression.json"),
        Step("prune attention heads", _compfair(
            "compress", "prune", "--model", teacher, "--num-examples", profile.prune_examples, "--block-size", "64",
            "--min-blocks", "8", "--iterations", profile.prune_iterations, "--output", pruned), pruned / "compfair_compression.json"),
        Step("quantize to int8", _compfair("compress", "quantize", "--model", teacher, "--output", quantized),
             quantized / "compfair_compression.json"),
    ]
    # int8 checkpoints have no transformers loader: compfair registers the lm_eval model type for them
    evaluated = [("teacher", teacher, "hf"), ("distilled", distilled, "hf"), ("head-pruned", pruned, "hf"),
                 ("int8", quantized, "compfair-quantized")]
    if second_model:
        evaluated.append(("gemma3-270m", second_model, "hf"))
    for name, model_dir, model_type in evaluated:
        steps.append(Step(f"evaluate {name}", _lm_eval(model_dir, results / name, profile.limit, model_type),
                          results / name / ".done"))
    steps.append(Step("render the leaderboard",
                      _compfair("leaderboard", *[results / name for name, *_ in evaluated], "-o", output / "site"),
                      output / "site" / "index.html"))
    return steps


def run(steps: list[Step], started: float) -> None:
    for number, step in enumerate(steps, 1):
        clock = f"{time.monotonic() - started:6.0f}s"
        if step.done_marker.exists():
            print(f"[{number}/{len(steps)} {clock}] {step.title}: done already, skipped", flush=True)
            continue
        print(f"[{number}/{len(steps)} {clock}] {step.title}\n    $ {shlex.join(step.command)}", flush=True)
        done = subprocess.run(step.command, env={**os.environ, **step.env})
        if done.returncode != 0:
            raise SystemExit(f"compfair demo: step '{step.title}' failed (exit {done.returncode}); "
                             "fix the error above and run the demo again: finished steps are kept")
        if step.done_marker.name == ".done":
            step.done_marker.touch()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compfair demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="10 examples per task, fewer training steps, 4 models instead of 5 (~3 min)")
    parser.add_argument("--output", type=Path, default=Path("compfair-demo"), help="folder for models, results, site")
    parser.add_argument("--limit", type=int, help="examples per task (default: 50, --quick: 10)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="embedded teacher model")
    args = parser.parse_args(argv)
    profile = PROFILES["quick" if args.quick else "default"]
    if args.limit:
        profile = Profile(**{**profile.__dict__, "limit": args.limit})
    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
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
    run(plan(args.output.resolve(), teacher, profile, second), started)
    print(f"\ncompfair demo finished in {time.monotonic() - started:.0f} s. "
          f"Open {(args.output / 'site' / 'index.html').resolve()} in a browser.")
    return 0
