"""An in-process `evaluate` for `leaderboard.studies.cells.run_cell` (tests only): the same lm-eval evaluation as
the runner's subprocess (`cells.model_args`, the request cache in the cell folder, the cell's seed), without a
fresh interpreter and lm-eval's whole task index per cell (17 s of the 20 each tiny cell takes on this machine).
Picklable by reference, so Slurm jobs of the tests use it too (their PYTHONPATH holds tests/)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from leaderboard.studies.cells import CACHE, RESULTS, model_args

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}


def evaluate_in_process(cell: dict, folder: Path, log) -> None:
    import lm_eval
    from lm_eval.tasks import TaskManager

    os.environ.update(OFFLINE)
    log.flush()
    handler = logging.FileHandler(Path(log.name))  # lm-eval's own lines ("Cached requests: ...") into cell.log
    logger = logging.getLogger("lm_eval")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        out = lm_eval.simple_evaluate(
            model=cell["lm_eval_model"], model_args=model_args(cell, folder), tasks=cell["tasks"], limit=cell["limit"],
            batch_size=cell["batch_size"], device="cpu", use_cache=str(folder / CACHE), random_seed=cell["seed"],
            numpy_random_seed=cell["seed"], torch_random_seed=cell["seed"],
            task_manager=TaskManager(include_defaults=False, metadata=cell["metadata"] or None))
    finally:
        logger.removeHandler(handler)
        handler.close()
    results = folder / RESULTS / "in-process"
    results.mkdir(parents=True, exist_ok=True)
    partial = results / ".results.partial"
    partial.write_text(json.dumps({"results": out["results"]}, default=str), encoding="utf-8")
    os.replace(partial, results / "results_cell.json")


def loglik_metrics(folder: Path) -> dict:
    """Every numeric metric of a cell's lm-eval results (loglik tasks: deterministic)."""
    [results] = sorted((folder / RESULTS).rglob("results_*.json"))
    metrics = {}
    for task, values in json.loads(results.read_text())["results"].items():
        for name, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics[(task, name)] = value
    return metrics
