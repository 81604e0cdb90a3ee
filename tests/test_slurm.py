"""Study cells as Slurm jobs, on a real single-node Slurm (tests/slurm_cluster.py; `make slurm` installs it).

Without root or without Slurm these tests skip with the reason; in CI (CI=true) they fail instead. All of them
share one cluster per session and run in one pytest-xdist worker (xdist_group, `--dist loadgroup`).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from compfair_tasks.errors import CompfairError
from conftest import save_tiny_gpt2
from leaderboard.studies import slurm
from leaderboard.studies.cells import evaluate_in_process
from leaderboard.studies.executors import LocalExecutor
from leaderboard.studies.plan import cell_dir, load_plan, make_plan, write_plan
from leaderboard.studies.spec import load_spec
from leaderboard.studies.status import cell_states, summary
from slurm_cluster import SingleNodeSlurm, missing_reason

LOCK = Path("/tmp/compfair-slurm-tests.lock")


def _slurm_or_skip() -> None:
    reason = missing_reason()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm_cluster():
    _slurm_or_skip()
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one cluster at a time on this machine, whatever the xdist layout
        cluster = SingleNodeSlurm()
        try:
            cluster.start()
            print(f"single-node Slurm up in {cluster.started_seconds:.1f} s")
            yield cluster
        finally:
            cluster.stop()


@pytest.fixture
def compute_node_env(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # sbatch exports the environment to the jobs


def loglik_metrics(folder: Path) -> dict:
    """Every numeric metric of a cell's lm-eval results (loglik tasks: deterministic)."""
    [results] = sorted((folder / "results").rglob("results_*.json"))
    metrics = {}
    for task, values in json.loads(results.read_text())["results"].items():
        for name, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics[(task, name)] = value
    return metrics


def cell(cell_id: str, model: Path | str, limit: int | None = 6, batch_size: int = 4) -> dict:
    return {"id": cell_id, "series": "tiny", "series_order": 0, "axis": {"name": "order", "value": 0},
            "member": {"pretrained": str(model), "revision": None, "label": cell_id, "size": None},
            "compression": {"method": "none", "level": None, "label": "none"}, "lm_eval_model": "hf",
            "tasks": ["compfair_crows_pairs"], "limit": limit, "batch_size": batch_size, "seed": 1234,
            "metadata": {}, "gen_kwargs": "", "model_args": "", "device": None}


def executor(**overrides) -> slurm.SlurmExecutor:
    resources = slurm.SlurmResources(cpus_per_task=1, time="15", array_parallelism=2)
    # each job evaluates in its own interpreter as the local executor does (the subprocess path: the next test)
    return slurm.SlurmExecutor(resources, cell_job=slurm.CellJob(evaluate=evaluate_in_process), poll_seconds=1,
                               **overrides)


def write_spec(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_resources_from_spec_and_command_line():
    resources = slurm.SlurmResources.from_spec(
        {"kind": "slurm", "partition": "gpu", "account": "lab", "time": "1-02:30:00", "mem_gb": 32,
         "gpus_per_cell": 2, "sbatch": ["--qos=high", "--exclusive"]}, cpus_per_task=8, partition=None)
    parameters = resources.submitit_parameters()
    assert parameters["partition"] == "gpu" and parameters["account"] == "lab" and parameters["cpus_per_task"] == 8
    assert parameters["time"] == 24 * 60 + 150 and parameters["mem"] == "32768MB" and parameters["gpus_per_node"] == 2
    assert parameters["additional_parameters"] == {"qos": "high", "exclusive": True}
    assert parameters["array_parallelism"] == 16
    with pytest.raises(CompfairError, match="unknown Slurm executor key.*partiton.*use"):
        slurm.SlurmResources.from_spec({"partiton": "gpu"})
    with pytest.raises(CompfairError, match="not a Slurm time"):
        slurm.SlurmResources.from_spec({"time": "4 hours"})
    with pytest.raises(CompfairError, match="accelerate, parallelize, vllm"):
        slurm.SlurmResources.from_spec({"multi_gpu": "deepspeed"})


def test_multi_gpu_cells_run_lm_eval_as_the_readme_documents(tmp_path):
    one = cell("big@step1000+none", "EleutherAI/pythia-6.9b-deduped", limit=None, batch_size=8)
    one["member"]["revision"] = "step1000"
    folder = tmp_path / "cells" / one["id"]
    common = ["--tasks", "compfair_crows_pairs", "--batch_size", "8", "--output_path", str(folder / "results"),
              "--log_samples", "--seed", "1234", "--use_cache", str(folder / "lm_cache")]
    args = "pretrained=EleutherAI/pythia-6.9b-deduped,revision=step1000"
    python = sys.executable
    assert slurm.multi_gpu_command(one, folder, 4, "accelerate") == [
        python, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes=4", "-m", "lm_eval", "run",
        "--model", "hf", "--model_args", args, *common]
    assert slurm.multi_gpu_command(one, folder, 4, "parallelize") == [
        python, "-m", "lm_eval", "run", "--model", "hf", "--model_args", args + ",parallelize=True", *common]
    assert slurm.multi_gpu_command(one, folder, 2, "vllm") == [
        python, "-m", "lm_eval", "run", "--model", "vllm", "--model_args", args + ",tensor_parallel_size=2", *common]
    compressed = dict(one, compression={"method": "dynamic-int8", "level": None, "label": "int8"}, limit=40)
    command = slurm.multi_gpu_command(compressed, folder, 2, "parallelize")
    assert command[command.index("--model_args") + 1] == f"pretrained={folder / 'model'},parallelize=True"
    assert command[command.index("--limit") + 1] == "40"
    # a cell that holds several GPUs gets that evaluation; one GPU or none keeps the runner's own
    assert slurm.CellJob(gpus=1).evaluate is None
    job = slurm.SlurmExecutor(slurm.SlurmResources(gpus_per_cell=4, multi_gpu="vllm")).cell_job
    assert (job.evaluate.gpus, job.evaluate.launcher) == (4, "vllm")


def test_slurm_tests_fail_in_ci_and_skip_locally(monkeypatch):
    import slurm_cluster

    monkeypatch.setattr(slurm_cluster.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(__import__("test_slurm"), "missing_reason", slurm_cluster.missing_reason)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="as root"):
        _slurm_or_skip()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="as root"):
        _slurm_or_skip()


CHECKPOINT_SPEC = """name: slurm-equal
tasks: [compfair_crows_pairs]
limit: 6
batch_size: 4
seed: 1234
series:
  - name: student
    checkpoints: ck
compressions: [none]
"""


@pytest.mark.slow
@pytest.mark.xdist_group("slurm")
def test_a_study_through_slurm_equals_the_local_run(slurm_cluster, tmp_path, compute_node_env, capfd):
    for step in range(5):
        save_tiny_gpt2(tmp_path / "ck" / f"checkpoint-{step}", seed=step)
    spec = load_spec(write_spec(tmp_path / "spec.yaml", CHECKPOINT_SPEC))
    cells = make_plan(spec)
    broken = tmp_path / "ck" / "checkpoint-4" / "model.safetensors"
    broken.write_bytes(b"not a safetensors file")  # its cell raises inside lm-eval
    local_dir, slurm_dir = tmp_path / "local", tmp_path / "slurm"
    good = [one for one in cells if one["id"] != "student@4+none"]
    write_plan(local_dir, spec, good)
    began = time.monotonic()
    LocalExecutor().run(local_dir, good)  # in this process, one cell after the other
    local_seconds = time.monotonic() - began

    write_plan(slurm_dir, spec, cells)
    began = time.monotonic()
    executor().run(slurm_dir, cells)
    slurm_seconds = time.monotonic() - began
    with capfd.disabled():
        print(f"\n4 cells: local {local_seconds:.1f} s, Slurm (2 at once, with the probe job) {slurm_seconds:.1f} s")

    for one in good:
        local = loglik_metrics(cell_dir(local_dir, one["id"]))
        assert local and loglik_metrics(cell_dir(slurm_dir, one["id"])) == local
        record = json.loads((cell_dir(slurm_dir, one["id"]) / "record.json").read_text())
        submitted = slurm.read_slurm_record(cell_dir(slurm_dir, one["id"]))
        assert record["executor"] == {"kind": "slurm", "job_id": submitted["job_id"], "state": None}
    states = cell_states(slurm_dir)
    assert states == {**{one["id"]: "done" for one in good}, "student@4+none": "failed"}
    failed_log = cell_dir(slurm_dir, "student@4+none") / "cell.log"
    assert "Traceback" in failed_log.read_text()
    terminal = capfd.readouterr().err
    assert "FAILED student@4+none: " in terminal and f"cell log: {failed_log}" in terminal
    assert "wrote to the study folder" in terminal  # the probe job ran first
    table = summary(slurm_dir)
    assert f"log: {failed_log}" in table and "failed" in table.splitlines()[-2]


def _cache_rows(database: Path) -> int:
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1) as connection:
            return connection.execute("SELECT COUNT(*) FROM unnamed").fetchone()[0]
    except sqlite3.Error:
        return 0


CANCEL_SPEC = """name: slurm-cancel
tasks: [compfair_crows_pairs]
limit: 100
batch_size: 1
seed: 1234
series:
  - name: tiny
    models: [{pretrained: SLOW, label: slow}, {pretrained: QUICK, label: quick}]
compressions: [none]
executor: {kind: slurm, cpus_per_task: 1, time: "15", array_parallelism: 2}
"""


@pytest.mark.slow
@pytest.mark.xdist_group("slurm")
def test_a_cancelled_cell_is_the_only_one_rerun_and_computes_only_its_missing_requests(
        slurm_cluster, tiny_gpt2_dir, tmp_path, capsys):
    """The user's path: `compfair study run --executor slurm` twice, the runner's own lm_eval subprocess per cell."""
    slow_model = save_tiny_gpt2(tmp_path / "slower", n_layer=4, n_embd=256, seed=7)
    spec = write_spec(tmp_path / "spec.yaml", CANCEL_SPEC.replace("SLOW", str(slow_model))
                      .replace("QUICK", str(tiny_gpt2_dir)))
    study = tmp_path / "study"
    command = [sys.executable, "-m", "compfair_tasks.cli", "study", "run", str(spec), "--output", str(study)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    began = time.monotonic()
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)

    deadline = time.monotonic() + 400
    while not (study / "plan.json").exists():
        assert first.poll() is None and time.monotonic() < deadline, first.stdout.read()
        time.sleep(0.2)
    [slow] = [one["id"] for one in load_plan(study) if one["member"]["pretrained"] == str(slow_model)]
    [quick] = [one["id"] for one in load_plan(study) if one["id"] != slow]
    database, total = cell_dir(study, slow) / "lm_cache_rank0.db", 2 * 100  # CrowS-Pairs: 2 requests a pair
    while _cache_rows(database) < 0.8 * total:  # pre-empted at 80% of its requests
        assert first.poll() is None and time.monotonic() < deadline, f"{first.stdout.read()}\n{slurm_cluster.logs()}"
        time.sleep(0.05)
    cancelled = slurm.read_slurm_record(cell_dir(study, slow))["job_id"]
    slurm.SlurmExecutor(probe=False).run(study, [one for one in load_plan(study) if one["id"] == slow])
    assert slurm.read_slurm_record(cell_dir(study, slow))["job_id"] == cancelled  # running: not submitted twice
    subprocess.run(["scancel", cancelled], check=True)
    output = first.communicate(timeout=300)[0]
    assert first.returncode == 1, output  # the run ends when its jobs have left the queue; one cell failed
    cached_at_cancel = _cache_rows(database)
    assert 0.8 * total <= cached_at_cancel < total
    status_before = _cli_status(study)
    assert re.search(rf"failed +{re.escape(slow)} .*slurm job {cancelled} CANCELLED; slurm log: ", status_before)
    assert re.search(rf"done +{re.escape(quick)} .*slurm job \S+ COMPLETED", status_before)
    quick_job = slurm.read_slurm_record(cell_dir(study, quick))

    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=400)
    seconds = time.monotonic() - began
    assert second.returncode == 0, second.stdout + second.stderr
    assert "2 cells, 1 done already, 1 to run (slurm)" in second.stdout
    assert "submitted 1 cell(s)" in second.stderr
    assert slurm.read_slurm_record(cell_dir(study, quick)) == quick_job  # not submitted again
    status_after = _cli_status(study)
    assert status_after.splitlines()[-1] == "2 done, 0 running, 0 failed, 0 left (of 2)"
    with capsys.disabled():
        print(f"\ncancel and resume, both runs {seconds:.0f} s\n$ compfair study status (after the scancel)\n"
              f"{status_before}\n$ compfair study status (after the rerun)\n{status_after}")

    # lm-eval's CachingLM: the rerun took the requests cached before the scancel and computed only the rest
    log = (cell_dir(study, slow) / "cell.log").read_text()
    runs = re.findall(r"Cached requests: (\d+), Requests remaining: (\d+)", log)
    assert runs[0] == ("0", str(total)) and runs[-1] == (str(cached_at_cancel), str(total - cached_at_cancel))
    assert _cache_rows(database) == total


def _cli_status(study: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "compfair_tasks.cli", "study", "status", str(study)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()
