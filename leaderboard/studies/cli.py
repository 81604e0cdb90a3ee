"""`compfair study run SPEC`, `compfair study status DIR`, `compfair study report DIR`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

SLURM_OPTIONS = (("partition", str, "Slurm partition"), ("account", str, "Slurm account"),
                 ("time", str, "time limit per cell: minutes or [D-]HH:MM[:SS]"),
                 ("cpus_per_task", int, "CPUs per cell"), ("mem_gb", float, "memory per cell, GB"),
                 ("gpus_per_cell", int, "GPUs per cell"), ("array_parallelism", int, "cells running at once at most"))


def run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="compfair study run", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     description="Run a study: every series member x compression is one cell "
                                                 "(compress, evaluate with lm_eval, record). Cells done with the same "
                                                 "settings are skipped, so a rerun resumes.")
    parser.add_argument("spec", type=Path, help="the study spec (YAML; README: Studies)")
    parser.add_argument("--output", type=Path, help="study folder (default: compfair-study-<name>)")
    parser.add_argument("--executor", choices=("local", "slurm"), help="where cells run (default: the spec's, else local)")
    parser.add_argument("--dry-run", action="store_true", help="check the spec, write plan.json and list the cells; "
                                                               "run nothing")
    parser.add_argument("--subprocess", action="store_true",
                        help="local executor: run `lm_eval run` in a subprocess per cell instead of in this process "
                             "(slower; a cell that crashes the interpreter cannot stop the others)")
    slurm = parser.add_argument_group("slurm executor (override the spec's executor: block)")
    for name, kind, text in SLURM_OPTIONS:
        slurm.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, help=f"{text} (default: the spec's)")
    slurm.add_argument("--sbatch", action="append", help="extra sbatch option, e.g. --sbatch=--qos=normal; repeatable")
    return parser


def run(argv: list[str] | None = None) -> int:
    args = run_parser().parse_args(argv)
    from .plan import make_plan, write_plan
    from .spec import load_spec
    from .status import cell_states, summary

    spec = load_spec(args.spec)
    cells = make_plan(spec)  # refuses a bad spec, a missing revision or model before anything runs
    study_dir = (args.output or Path(f"compfair-study-{spec.name}")).resolve()
    kind = args.executor or spec.executor.get("kind", "local")
    executor = _executor(kind, spec, args)
    write_plan(study_dir, spec, cells)
    states = cell_states(study_dir)
    todo = [cell for cell in cells if states[cell["id"]] != "done"]
    print(f"compfair study {spec.name}: {len(cells)} cells, {len(cells) - len(todo)} done already, "
          f"{len(todo)} to run ({kind}); folder {study_dir}", flush=True)
    if args.dry_run:
        for cell in cells:
            print(f"  {states[cell['id']]:<8} {cell['id']}")
        return 0
    started = time.monotonic()
    if todo:
        executor.run(study_dir, todo)
    print(summary(study_dir))
    print(f"study run took {time.monotonic() - started:.0f} s; `compfair study report {study_dir}` makes its report")
    return 1 if any(state == "failed" for state in cell_states(study_dir).values()) else 0


def _executor(kind: str, spec, args):
    if kind == "local":
        from .executors import LocalExecutor

        return LocalExecutor(in_process=not args.subprocess)
    from .slurm import SlurmExecutor, SlurmResources

    overrides = {name: getattr(args, name) for name, _, _ in SLURM_OPTIONS}
    overrides["sbatch"] = args.sbatch
    return SlurmExecutor(SlurmResources.from_spec(spec.executor, **overrides))


def status(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compfair study status", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     description="each cell of a study: done, running, failed (with its log), pending")
    parser.add_argument("study_dir", type=Path, help="the study folder")
    args = parser.parse_args(argv)
    from .status import summary

    print(summary(args.study_dir))
    return 0


def report(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compfair study report", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     description="the study's report: figures, tables, quality-matched control, CSV")
    parser.add_argument("study_dir", type=Path, help="the study folder")
    parser.add_argument("--output", type=Path, help="report folder (default: STUDY_DIR/report)")
    args = parser.parse_args(argv)
    from .report import build_report

    print(build_report(args.study_dir, args.output))
    return 0
