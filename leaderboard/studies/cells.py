"""One cell: [compress] -> evaluate with lm_eval -> record.json (written whole, then renamed).

`run_cell(study_dir, cell_id)` is what every executor calls (the local one in this process, Slurm's on a
compute node). It is idempotent: a cell whose record is "done" under the same settings key returns at once.
The settings key hashes the cell dict, the software versions and a fingerprint of local model folders
(compfair_tasks.runner's), so new code, a retrained checkpoint or a changed spec entry reruns exactly that cell.
lm_eval runs with its request cache in the cell folder (`--use_cache`), so a cell killed at 80% of its
requests computes only the rest on the rerun; the cache is dropped when the settings key changes (its keys
are the requests alone, not the model, so a stale cache would answer for another model).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

from compfair_tasks.runner import fingerprint, lm_eval_command
from compfair_tasks.versions import software_versions

from .plan import cell_dir, load_plan, write_json

RECORD = "record.json"
LOG = "cell.log"
RUNNING = "running.json"
MODEL = "model"
RESULTS = "results"
CACHE = "lm_cache"
CACHE_KEY = "lm_cache.key"
MODEL_KEY = "model.key"
CLI_DEVICE = "cuda:0"  # lm_eval run's default --device (its HF model falls back to the CPU)


def settings_key(cell: dict) -> str:
    inputs = {}
    for name in (cell["member"]["pretrained"], cell["member"].get("tokenizer")):
        if name and Path(name).is_absolute():
            inputs[name] = fingerprint(Path(name))
    found = {"cell": cell, "software": software_versions(), "inputs": inputs}
    return hashlib.sha256(json.dumps(found, sort_keys=True).encode()).hexdigest()


def read_record(folder: Path) -> dict | None:
    try:
        return json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_done(record: dict | None, key: str) -> bool:
    return bool(record) and record.get("status") == "done" and record.get("settings_key") == key


def _compfair(*args) -> list[str]:
    return [sys.executable, "-m", "compfair_tasks.cli", *map(str, args)]


def _options(options: dict) -> list[str]:
    out = []
    for name, value in options.items():
        flag = f"--{name}"
        if value is True:
            out.append(flag)
        elif value not in (False, None):
            out += [flag, *map(str, value if isinstance(value, list) else [value])]
    return out


def compress_command(cell: dict, source: str, output: Path) -> list[str] | None:
    """The `compfair compress ...` command of a cell (None for "none")."""
    compression = cell["compression"]
    method, level, extra = compression["method"], compression["level"], _options(compression.get("options", {}))
    if method == "none":
        return None
    if method in ("dynamic-int8", "int8-per-token"):
        args = ("quantize", "--model", source, "--method", method)
    elif method in ("gptq", "rtn"):
        args = ("quantize", "--model", source, "--method", method, "--bits", level)
    elif method in ("wanda", "magnitude", "sparsegpt"):
        args = ("sparsify", "--model", source, "--method", method, "--sparsity", level)
    elif method == "prune-heads":  # level = fraction of heads kept: one pruning pass removes the rest
        args = ("prune", "--model", source, "--ratio", f"{1 - level:g}", "--iterations", 1)
    elif method == "distill":  # a depth, or one of the paper's students by preset name
        args = ("distill", "--teacher", source, "--preset" if isinstance(level, str) else "--num-layers", level)
    elif method == "noise":
        args = ("perturb", "--model", source, "--scale", level, "--seed", cell["seed"])
    else:
        raise ValueError(f"unknown compression method {method!r}")
    return _compfair("compress", *args, *extra, "--output", output)


def model_source(member: dict) -> str:
    """What a compressor loads: a local folder (a hub revision's snapshot folder in the Hugging Face cache)."""
    if not member.get("revision"):
        return member["pretrained"]
    from huggingface_hub import snapshot_download

    return snapshot_download(member["pretrained"], revision=member["revision"])


def model_args(cell: dict, folder: Path) -> str:
    member = cell["member"]
    if cell["compression"]["method"] == "none":
        parts = [f"pretrained={member['pretrained']}"]
        if member.get("revision"):
            parts.append(f"revision={member['revision']}")
    else:
        parts = [f"pretrained={folder / MODEL}"]
    if member.get("tokenizer"):
        parts.append(f"tokenizer={member['tokenizer']}")
    if cell.get("model_args"):
        parts.append(cell["model_args"])
    return ",".join(parts)


def evaluate_command(cell: dict, folder: Path) -> list[str]:
    command = lm_eval_command(model=cell["lm_eval_model"], model_args=model_args(cell, folder), tasks=cell["tasks"],
                              output_path=folder / RESULTS, batch_size=cell["batch_size"], limit=cell["limit"],
                              device=cell.get("device"), metadata=cell["metadata"] or None,
                              gen_kwargs=cell["gen_kwargs"], seed=cell["seed"])
    return command + ["--use_cache", str(folder / CACHE)]


class CellFailed(RuntimeError):
    """A step of a cell failed; the message is one line, the log has the rest."""


def _run_logged(command: list[str], log, title: str) -> None:
    log.write(f"\n$ {' '.join(command)}\n".encode())
    log.flush()
    done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy(), check=False)
    if done.returncode != 0:
        raise CellFailed(f"{title} failed (exit {done.returncode})")


def _reset_if_stale(folder: Path, key: str) -> None:
    """Drop what an older settings key made (results, request cache, compressed model): all ours, in our folder."""
    for marker, paths in ((CACHE_KEY, [*folder.glob(f"{CACHE}*.db"), folder / RESULTS]),
                          (MODEL_KEY, [folder / MODEL])):
        written = folder / marker
        if not written.is_file() or written.read_text().strip() != key:
            for path in paths:
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            written.unlink(missing_ok=True)


def find_cell(study_dir, cell_id: str) -> dict:
    for cell in load_plan(study_dir):
        if cell["id"] == cell_id:
            return cell
    raise KeyError(f"no cell {cell_id!r} in {Path(study_dir) / 'plan.json'}")


def run_cell(study_dir, cell_id: str, evaluate=None, executor: dict | None = None) -> dict:
    """Run one cell (compress if needed, evaluate, write record.json); return its record. Never raises for a
    failing cell: the record says "failed", with the error's one line and the log.

    evaluate(cell, folder, log): how to evaluate (default: the lm_eval CLI in a subprocess)."""
    study_dir = Path(study_dir)
    cell = find_cell(study_dir, cell_id)
    folder = cell_dir(study_dir, cell_id)
    key = settings_key(cell)
    old = read_record(folder)
    if is_done(old, key):
        return old
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / RUNNING, {"pid": os.getpid(), "host": socket.gethostname(), "started": _now()})
    began, started = time.monotonic(), _now()
    record = {"format": 1, "cell": cell, "settings_key": key, "status": "failed", "error": None, "log": LOG,
              "started": started, "executor": executor or {"kind": "local", "job_id": None, "state": None},
              "results_dir": RESULTS, "model_dir": None if cell["compression"]["method"] == "none" else MODEL,
              "software": software_versions()}
    try:
        _reset_if_stale(folder, key)
        with open(folder / LOG, "ab") as log:
            log.write(f"\n=== cell {cell_id} started {started} on {socket.gethostname()}\n".encode())
            _compress(cell, folder, key, log)
            (folder / CACHE_KEY).write_text(key)
            if (folder / RESULTS).exists():
                shutil.rmtree(folder / RESULTS)  # an interrupted run's partial results; the request cache stays
            (evaluate or evaluate_subprocess)(cell, folder, log)
        if not list((folder / RESULTS).rglob("results_*.json")):
            raise CellFailed(f"lm_eval wrote no results_*.json under {folder / RESULTS}")
        record["status"] = "done"
    except Exception as error:  # a failing cell must not stop the others: its record and log say why
        record["error"] = _one_line(error)
        with open(folder / LOG, "a", encoding="utf-8") as log:
            log.write(traceback.format_exc())
    record.update(finished=_now(), seconds=round(time.monotonic() - began, 2))
    write_json(folder / RECORD, record)
    (folder / RUNNING).unlink(missing_ok=True)
    return record


def _compress(cell: dict, folder: Path, key: str, log) -> None:
    command = compress_command(cell, "SOURCE", folder / MODEL)
    if command is None or (folder / MODEL_KEY).is_file():
        return  # uncompressed, or compressed already under this key (the evaluation failed or was interrupted)
    if (folder / MODEL).exists():
        shutil.rmtree(folder / MODEL)  # an interrupted compression's leftovers, in this cell's folder
    command = compress_command(cell, model_source(cell["member"]), folder / MODEL)
    _run_logged(command, log, f"compress {cell['compression']['label']}")
    (folder / MODEL_KEY).write_text(key)


def evaluate_subprocess(cell: dict, folder: Path, log) -> None:
    _run_logged(evaluate_command(cell, folder), log, "lm_eval")


def _one_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:300]}" if text else type(error).__name__


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def evaluate_in_process(cell: dict, folder: Path, log) -> None:
    """The cell's lm_eval run in this interpreter through lm_eval's public API (simple_evaluate and its
    EvaluationTracker), writing the same results_*.json and samples_*.jsonl as `lm_eval run` (a test compares).
    Libraries, compfair's data, scorers and the fluency judge stay loaded from one cell to the next."""
    import gc

    from lm_eval import simple_evaluate
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import simple_parse_args_string

    arguments = simple_parse_args_string(model_args(cell, folder))  # a dict, as the CLI passes (and records) it
    metadata = arguments | (cell["metadata"] or {})  # as the CLI merges them
    # Indexing lm_eval's thousands of task files takes ~30 s a cell on 2 busy cores; when every task of the cell
    # is compfair's, index only compfair's folder (the start-up hook adds it), which builds the same tasks.
    manager = TaskManager(include_defaults=False, metadata=metadata)
    if not all(name in manager.all_tasks for name in cell["tasks"]):
        manager = TaskManager(metadata=metadata)
    tracker = EvaluationTracker(output_path=str(folder / RESULTS))
    try:
        with output_to(log):
            seed = cell["seed"]
            results = simple_evaluate(
                model=cell["lm_eval_model"], model_args=arguments, tasks=cell["tasks"],
                batch_size=cell["batch_size"], device=cell.get("device") or CLI_DEVICE, use_cache=str(folder / CACHE),
                limit=cell["limit"], log_samples=True, evaluation_tracker=tracker,
                gen_kwargs=simple_parse_args_string(cell["gen_kwargs"]), task_manager=manager, random_seed=seed,
                numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed, metadata=metadata)
            samples = results.pop("samples")
            tracker.save_results_aggregated(results=results, samples=samples)
            for task_name in results["configs"]:
                tracker.save_results_samples(task_name=task_name, samples=samples[task_name])
    finally:
        gc.collect()  # the cell's model goes before the next one loads


@contextlib.contextmanager
def output_to(log):
    """Everything this process writes meanwhile (Python's and C libraries' stdout/stderr, child processes such as
    lm_eval's `git` call, Python logging) goes to the cell's log, as a subprocess's output would."""
    handler = logging.StreamHandler(sys.stderr)
    for stream in (sys.stdout, sys.stderr, log):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        for fd, copy in zip((1, 2), saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)
