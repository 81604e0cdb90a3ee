"""Wall time of a 4-checkpoint study against 4 separate `lm_eval run`s of the same cells (goal: ratio <= 0.6).

    python benchmarks/study_overhead.py            # 4 tiny GPT-2 checkpoints, CrowS-Pairs + StereoSet intra, 20 docs
    python benchmarks/study_overhead.py --limit 50

Side A: `compfair study run` (local executor: one interpreter evaluates every cell in-process, with a task index
of compfair's folder only). Side B: the same 4 evaluations as 4 `python -m lm_eval run` commands (each its own
interpreter, imports and full lm_eval task index), run one after the other. Both sides start from nothing (no
request cache, separate folders) and run offline. Prints the wall times, the children's CPU times (steadier
on a shared machine) and the ratios A/B.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TASKS = ["compfair_crows_pairs", "compfair_stereoset_intrasentence"]
STEPS = (0, 5, 10, 20)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(commands: list[list[str]], env: dict) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), _children_cpu()
    for command in commands:
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - wall, _children_cpu() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=20, help="documents per task")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    from compfair_tasks.runner import lm_eval_command
    from conftest import OFFLINE_ENV, save_tiny_gpt2

    env = {**os.environ, **OFFLINE_ENV}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for step in STEPS:  # a 4-checkpoint training series of a small GPT-2 (random weights, real BPE)
            save_tiny_gpt2(root / "ck" / f"checkpoint-{step}", n_layer=2, n_head=4, n_embd=64, seed=step)
        spec = root / "spec.yaml"
        spec.write_text(f"name: overhead\ntasks: [{', '.join(TASKS)}]\nlimit: {args.limit}\nbatch_size: 8\n"
                        "seed: 1234\nseries:\n  - name: tiny\n    checkpoints: ck\n")
        study = [sys.executable, "-m", "compfair_tasks.cli", "study", "run", str(spec), "--output", str(root / "study")]
        separate = [lm_eval_command(model="hf", model_args=f"pretrained={root / 'ck' / f'checkpoint-{step}'}",
                                    tasks=TASKS, output_path=root / "separate" / str(step), batch_size=8,
                                    limit=args.limit, seed=1234) for step in STEPS]
        b_wall, b_cpu = _timed(separate, env)
        a_wall, a_cpu = _timed([study], env)
    print(f"4 separate lm_eval runs: {b_wall:7.1f} s wall, {b_cpu:7.1f} s CPU")
    print(f"one 4-cell study:        {a_wall:7.1f} s wall, {a_cpu:7.1f} s CPU")
    print(f"ratio study / separate:  {a_wall / b_wall:.2f} wall, {a_cpu / b_cpu:.2f} CPU (goal <= 0.6)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
