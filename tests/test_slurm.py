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
import time
from pathlib import Path

import pytest
from submitit.helpers import Checkpointable

import slurm_standin_cells as standin
from compfair_tasks.errors import CompfairError
from conftest import save_tiny_gpt2
from leaderboard.studies import slurm
from slurm_cluster import SingleNodeSlurm, missing_reason

TESTS_DIR = Path(__file__).resolve().parent
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


class StandinCellJob(Checkpointable):
    """The array task of these tests: the TEST DOUBLE run_cell (see slurm_standin_cells)."""

    def __call__(self, study_dir: str, cell_id: str):
        import slurm_standin_cells

        return slurm_standin_cells.run_cell(study_dir, cell_id)


@pytest.fixture
def compute_node_env(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(TESTS_DIR))  # sbatch exports the environment: the jobs import the double
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def cell(cell_id: str, model: Path | str, limit: int = 6, batch_size: int = 4) -> dict:
    return {"id": cell_id, "series": "tiny", "series_order": 0, "axis": {"name": "seed", "value": 0},
            "member": {"pretrained": str(model), "revision": None, "label": cell_id, "size": None},
            "compression": {"method": "none", "level": None, "label": "none"}, "lm_eval_model": "hf",
            "tasks": ["compfair_crows_pairs"], "limit": limit, "batch_size": batch_size, "seed": 1234,
            "metadata": {}, "gen_kwargs": ""}


def executor(**overrides) -> slurm.SlurmExecutor:
    resources = slurm.SlurmResources(cpus_per_task=1, time="15", array_parallelism=2)
    return slurm.SlurmExecutor(resources, cell_job=StandinCellJob(), poll_seconds=1, **overrides)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    return [save_tiny_gpt2(root / f"seed{seed}", seed=seed) for seed in range(4)]


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
    cell_dir = tmp_path / "cells" / one["id"]
    common = ["--tasks", "compfair_crows_pairs", "--batch_size", "8", "--seed", "1234", "--output_path",
              str(cell_dir / "results"), "--log_samples", "--use_cache", str(cell_dir / "lm_cache")]
    args = "pretrained=EleutherAI/pythia-6.9b-deduped,revision=step1000"
    assert slurm.multi_gpu_command(one, cell_dir, 4, "accelerate") == [
        "accelerate", "launch", "--multi_gpu", "--num_processes=4", "-m", "lm_eval", "run",
        "--model", "hf", "--model_args", args, *common]
    assert slurm.multi_gpu_command(one, cell_dir, 4, "parallelize") == [
        "lm_eval", "run", "--model", "hf", "--model_args", args + ",parallelize=True", *common]
    assert slurm.multi_gpu_command(one, cell_dir, 2, "vllm") == [
        "lm_eval", "run", "--model", "vllm", "--model_args", args + ",tensor_parallel_size=2", *common]
    compressed = dict(one, compression={"method": "dynamic-int8", "level": None, "label": "int8"}, limit=40)
    (cell_dir / "model").mkdir(parents=True)
    command = slurm.multi_gpu_command(compressed, cell_dir, 2, "parallelize")
    assert command[command.index("--model_args") + 1] == f"pretrained={cell_dir / 'model'},parallelize=True"
    assert command[-2:] == ["--limit", "40"]


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


@pytest.mark.slow
@pytest.mark.xdist_group("slurm")
def test_a_study_through_slurm_equals_the_local_run(slurm_cluster, tiny_models, tmp_path, compute_node_env, capfd):
    cells = [cell(f"tiny-seed{seed}+none", model) for seed, model in enumerate(tiny_models)]
    local_dir, slurm_dir = tmp_path / "local", tmp_path / "slurm"
    standin.write_plan(local_dir, cells)
    began = time.monotonic()
    for one in cells:  # the local executor's order and process layout: one cell after the other
        standin.run_cell(local_dir, one["id"])
    local_seconds = time.monotonic() - began

    failing = cell("raises+none", "raise")
    standin.write_plan(slurm_dir, cells + [failing])
    began = time.monotonic()
    executor().run(slurm_dir, standin.cells_to_run(slurm_dir, standin.load_plan(slurm_dir)))
    slurm_seconds = time.monotonic() - began
    with capfd.disabled():
        print(f"\n4 cells: local {local_seconds:.1f} s, Slurm (2 at once, with the probe job) {slurm_seconds:.1f} s")

    for one in cells:
        local = standin.loglik_metrics(local_dir / "cells" / one["id"])
        assert local and standin.loglik_metrics(slurm_dir / "cells" / one["id"]) == local
        record = json.loads((slurm_dir / "cells" / one["id"] / "record.json").read_text())
        submitted = json.loads((slurm_dir / "cells" / one["id"] / "slurm.json").read_text())
        assert record["executor"] == {"kind": "slurm", "job_id": submitted["job_id"]}
    rows = {row.cell_id: row for row in slurm.slurm_cell_status(slurm_dir, [c["id"] for c in cells + [failing]])}
    assert [rows[one["id"]].state for one in cells] == ["done"] * 4
    failed = rows["raises+none"]
    assert failed.state == "failed" and failed.slurm_state == "FAILED"
    assert "fails on purpose" in Path(failed.log).read_text()
    terminal = capfd.readouterr().err
    assert f"cell raises+none failed: Slurm job {failed.job_id} FAILED; log {failed.log}" in terminal
    assert "wrote to the study folder" in terminal  # the probe job ran first
    # the Slurm job's own stderr holds the traceback
    assert "fails on purpose" in Path(json.loads((slurm_dir / "cells/raises+none/slurm.json").read_text())["stderr"]
                                      ).read_text()


def _cache_rows(database: Path) -> int:
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1) as connection:
            return connection.execute("SELECT COUNT(*) FROM unnamed").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.slow
@pytest.mark.xdist_group("slurm")
def test_a_cancelled_cell_is_the_only_one_rerun_and_computes_only_its_missing_requests(
        slurm_cluster, tiny_models, tmp_path, compute_node_env, capfd):
    slow_model = save_tiny_gpt2(tmp_path / "slower", n_layer=4, n_embd=256, seed=7)
    slow = cell("slow+none", slow_model, limit=150, batch_size=1)  # 300 loglikelihood requests, one by one
    quick = [cell(f"tiny-seed{seed}+none", tiny_models[seed]) for seed in (0, 1)]
    study = tmp_path / "study"
    standin.write_plan(study, [slow, *quick])
    executor(wait=False, probe=False).run(study, standin.cells_to_run(study, standin.load_plan(study)))
    submitted = {one["id"]: slurm.read_slurm_record(study / "cells" / one["id"]) for one in (slow, *quick)}

    database, total = study / "cells/slow+none/lm_cache_rank0.db", 2 * 150
    deadline = time.monotonic() + 300
    while _cache_rows(database) < 0.8 * total:  # pre-empted at 80% of its requests
        assert time.monotonic() < deadline, f"the slow cell never reached 80%: {slurm_cluster.logs()}"
        time.sleep(0.05)
    subprocess.run(["scancel", submitted["slow+none"]["job_id"]], check=True)
    while any(state not in slurm.FINISHED_STATES for state in slurm.job_states(
            [record["job_id"] for record in submitted.values()]).values()):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    cached_at_cancel = _cache_rows(database)
    rows = slurm.slurm_cell_status(study, list(submitted))
    status_before = slurm.format_status(rows)
    assert [(row.state, row.slurm_state) for row in rows] == [("failed", "CANCELLED"), ("done", "COMPLETED"),
                                                               ("done", "COMPLETED")]
    assert 0.8 * total <= cached_at_cancel < total

    left = standin.cells_to_run(study, standin.load_plan(study))
    assert [one["id"] for one in left] == ["slow+none"]
    executor(probe=False).run(study, left)
    resubmitted = {one: slurm.read_slurm_record(study / "cells" / one) for one in submitted}
    assert resubmitted["slow+none"]["job_id"] != submitted["slow+none"]["job_id"]
    assert all(resubmitted[one["id"]] == submitted[one["id"]] for one in quick)  # not submitted again
    status_after = slurm.format_status(slurm.slurm_cell_status(study, list(submitted)))
    with capfd.disabled():
        print(f"after the scancel:\n{status_before}\nafter the rerun:\n{status_after}")
    assert status_after.splitlines()[0] == "done 3 running 0 pending 0 failed 0"

    # lm-eval's CachingLM: the rerun took the requests cached before the scancel and computed only the rest
    log = (study / "cells/slow+none/cell.log").read_text()
    reruns = re.findall(r"Cached requests: (\d+), Requests remaining: (\d+)", log)
    assert reruns[-1] == (str(cached_at_cancel), str(total - cached_at_cancel))
    assert _cache_rows(database) == total
