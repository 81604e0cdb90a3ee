"""TEST DOUBLE of `leaderboard.studies.cells.run_cell`, for the Slurm executor's tests only.

It keeps the study-folder contract of coord's STUDY_INTERFACE (plan.json, cells/<id>/{cell.log, results/,
lm_cache, record.json written whole then renamed}) and evaluates a cell with the real `lm_eval.simple_evaluate`
and its request cache (in this process, as the study runner does), so what the Slurm tests prove
(submission, states, resume, equality with the local run) does not depend on the study runner. A cell whose `member.pretrained` is "raise" fails on purpose.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def write_plan(study_dir: Path, cells: list[dict]) -> None:
    study_dir.mkdir(parents=True, exist_ok=True)
    (study_dir / "plan.json").write_text(json.dumps(cells, indent=1), encoding="utf-8")


def load_plan(study_dir) -> list[dict]:
    return json.loads((Path(study_dir) / "plan.json").read_text(encoding="utf-8"))


def cells_to_run(study_dir, cells: list[dict]) -> list[dict]:
    """The runner's rule: every cell without a record that says done."""
    left = []
    for cell in cells:
        record = Path(study_dir) / "cells" / cell["id"] / "record.json"
        if not (record.exists() and json.loads(record.read_text())["status"] == "done"):
            left.append(cell)
    return left


def evaluate(cell: dict, cell_dir: Path) -> None:
    """lm-eval in this process, with its request cache in the cell folder; its log lines go to cell.log."""
    import logging

    import lm_eval
    from lm_eval.tasks import TaskManager

    handler = logging.FileHandler(cell_dir / "cell.log")
    logger = logging.getLogger("lm_eval")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        out = lm_eval.simple_evaluate(
            model="hf", model_args=f"pretrained={cell['member']['pretrained']}", tasks=cell["tasks"],
            limit=cell["limit"], batch_size=cell["batch_size"], device="cpu", use_cache=str(cell_dir / "lm_cache"),
            random_seed=cell["seed"], numpy_random_seed=cell["seed"], torch_random_seed=cell["seed"],
            task_manager=TaskManager(include_defaults=False))  # compfair's tasks only: 0.1 s instead of 17
    finally:
        logger.removeHandler(handler)
        handler.close()
    results = cell_dir / "results"
    results.mkdir(exist_ok=True)
    partial = results / ".results.partial"
    partial.write_text(json.dumps({"results": out["results"]}, default=str), encoding="utf-8")
    os.replace(partial, results / "results_cell.json")


def run_cell(study_dir, cell_id: str) -> dict:
    study_dir = Path(study_dir)
    [cell] = [cell for cell in load_plan(study_dir) if cell["id"] == cell_id]
    cell_dir = study_dir / "cells" / cell_id
    cell_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with open(cell_dir / "cell.log", "a", encoding="utf-8") as log:
        log.write(f"cell {cell_id} on {os.uname().nodename} job {os.environ.get('SLURM_JOB_ID')}\n")
    if cell["member"]["pretrained"] == "raise":
        with open(cell_dir / "cell.log", "a", encoding="utf-8") as log:
            log.write("ValueError: this cell fails on purpose\n")
        _write_record(cell_dir, cell, "failed", "ValueError: this cell fails on purpose", started)
        raise ValueError(f"cell {cell_id} fails on purpose")
    os.environ.update(OFFLINE)
    evaluate(cell, cell_dir)
    return _write_record(cell_dir, cell, "done", None, started)


def _write_record(cell_dir: Path, cell: dict, status: str, error: str | None, started: float) -> dict:
    job = os.environ.get("SLURM_ARRAY_JOB_ID")
    record = {"format": 1, "cell": cell, "status": status, "error": error, "log": "cell.log",
              "seconds": time.time() - started,
              "executor": {"kind": "slurm" if job else "local",
                           "job_id": f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if job else None},
              "results_dir": "results"}
    partial = cell_dir / ".record.json.partial"
    partial.write_text(json.dumps(record, indent=1), encoding="utf-8")
    os.replace(partial, cell_dir / "record.json")
    return record


def loglik_metrics(cell_dir: Path) -> dict:
    """Every numeric metric of the cell's lm-eval results (loglik tasks: deterministic)."""
    [results] = sorted((cell_dir / "results").rglob("results_*.json"))
    metrics = {}
    for task, values in json.loads(results.read_text())["results"].items():
        for name, value in values.items():
            if isinstance(value, (int, float)) and name != "alias":
                metrics[(task, name)] = value
    return metrics
