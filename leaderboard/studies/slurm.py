"""Study cells as Slurm jobs: one submitit job array per `study run`, the study folder as the shared state.

compfair does not manage a cluster; it submits to one. Every cell is one array task that calls
`leaderboard.studies.cells.run_cell(study_dir, cell_id)` on a compute node, so the study folder must sit on a
filesystem the nodes share (a tiny probe job checks that before the grid is submitted). A cell's record
appears whole or not at all, so a rerun submits only the cells without a complete record. A cell that Slurm
pre-empts or times out is requeued by submitit (the job is `Checkpointable`) and resumes from lm-eval's
request cache in the cell folder (`--use_cache`), computing only the requests it had not finished.

Job states come from `sacct` where the cluster keeps accounting, otherwise from `squeue` (which remembers
finished jobs for MinJobAge, 5 minutes by default) and the cell's record.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field, fields
from pathlib import Path

from submitit.helpers import Checkpointable

from compfair_tasks.errors import CompfairError

from .plan import cell_dir

SLURM_RECORD = "slurm.json"
SUBMITIT_FOLDER = "slurm"  # submitit's pickles and the jobs' stdout/stderr, inside the study folder
MULTI_GPU_LAUNCHERS = ("accelerate", "parallelize", "vllm")
FINISHED_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "OUT_OF_MEMORY",
                   "BOOT_FAIL", "DEADLINE", "REVOKED"}
QUEUED_STATES = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED"}


@dataclass
class SlurmResources:
    """What each cell asks of Slurm: from the spec's `executor:` block, overridden by the command line."""

    partition: str | None = None
    account: str | None = None
    time: str = "04:00:00"  # per cell: minutes, or [D-]HH:MM[:SS] as sbatch takes it
    cpus_per_task: int = 4
    mem_gb: float | None = None
    gpus_per_cell: int = 0
    array_parallelism: int = 16  # at most this many cells run at once
    multi_gpu: str = "accelerate"  # how a cell with several GPUs evaluates: accelerate | parallelize | vllm
    sbatch: list[str] = field(default_factory=list)  # extra sbatch options, e.g. ["--qos=normal", "--constraint=a100"]

    @classmethod
    def from_spec(cls, block: dict | None, **overrides) -> SlurmResources:
        """Resources from the spec's `executor:` mapping (its `kind` key ignored) and command-line overrides."""
        values = {key: value for key, value in (block or {}).items() if key != "kind"}
        values.update({key: value for key, value in overrides.items() if value is not None})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CompfairError(f"unknown Slurm executor key(s) {', '.join(unknown)}: use {', '.join(sorted(known))}")
        resources = cls(**values)
        resources.timeout_minutes()  # refuse a malformed time now, not at sbatch
        if resources.multi_gpu not in MULTI_GPU_LAUNCHERS:
            raise CompfairError(f"executor multi_gpu: {resources.multi_gpu!r} is not one of "
                                f"{', '.join(MULTI_GPU_LAUNCHERS)}: pick one (README: Several GPUs)")
        for option in resources.sbatch:
            if not str(option).startswith("--"):
                raise CompfairError(f"executor sbatch option {option!r} is not a long option: write it as --name=value")
        return resources

    def timeout_minutes(self) -> int:
        text = str(self.time).strip()
        if re.fullmatch(r"\d+", text):
            return int(text)
        match = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d+)(?::(\d+))?", text)
        if not match:
            raise CompfairError(f"executor time {self.time!r} is not a Slurm time: write minutes (240) or "
                                "[D-]HH:MM[:SS] (04:00:00)")
        days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
        return max(1, days * 1440 + hours * 60 + minutes + (1 if seconds else 0))

    def submitit_parameters(self) -> dict:
        """The parameters of `submitit.SlurmExecutor.update_parameters`."""
        extra = {}
        for option in self.sbatch:
            name, sep, value = str(option)[2:].partition("=")
            extra[name] = value if sep else True
        parameters = {"time": self.timeout_minutes(), "cpus_per_task": self.cpus_per_task,
                      "array_parallelism": self.array_parallelism, "job_name": "compfair-cell",
                      "additional_parameters": extra}
        if self.partition:
            parameters["partition"] = self.partition
        if self.account:
            parameters["account"] = self.account
        if self.mem_gb:
            parameters["mem"] = f"{int(self.mem_gb * 1024)}MB"
        if self.gpus_per_cell:
            parameters["gpus_per_node"] = self.gpus_per_cell
        return parameters


class CellJob(Checkpointable):
    """What a compute node runs for one cell: `cells.run_cell`, with the Slurm job id in its record.

    Checkpointable: on pre-emption or time-out submitit requeues the same call, which resumes from the cell's
    lm-eval request cache. A cell holding several GPUs evaluates through `MultiGpuEvaluate`."""

    def __init__(self, gpus: int = 0, multi_gpu: str = "accelerate", evaluate=None) -> None:
        self.evaluate = evaluate or (MultiGpuEvaluate(gpus, multi_gpu) if gpus > 1 else None)

    def __call__(self, study_dir: str, cell_id: str) -> dict:
        from submitit import JobEnvironment

        from .cells import run_cell

        executor = {"kind": "slurm", "job_id": str(JobEnvironment().job_id), "state": None}
        return run_cell(study_dir, cell_id, evaluate=self.evaluate, executor=executor)


class MultiGpuEvaluate:
    """`cells.run_cell`'s evaluate for a cell that holds several GPUs (see `multi_gpu_command`)."""

    def __init__(self, gpus: int, launcher: str) -> None:
        self.gpus, self.launcher = gpus, launcher

    def __call__(self, cell: dict, folder: Path, log) -> None:
        from .cells import _run_logged

        _run_logged(multi_gpu_command(cell, folder, self.gpus, self.launcher), log, f"lm_eval ({self.launcher})")


def _probe_write(path: str) -> str:
    """Runs on a compute node: proves the study folder is shared by writing into it."""
    Path(path).write_text(os.uname().nodename, encoding="utf-8")
    return path


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "empty log"


def _require_slurm() -> None:
    missing = [name for name in ("sbatch", "squeue", "srun") if shutil.which(name) is None]
    if missing:
        raise CompfairError(f"Slurm's {', '.join(missing)} not found: run `compfair study run --executor slurm` on "
                            "a login node of a Slurm cluster, or use --executor local")


class SlurmExecutor:
    """`.run(study_dir, cells)`: submit the cells as one job array and (by default) wait until they leave the queue."""

    def __init__(self, resources: SlurmResources | None = None, *, wait: bool = True, poll_seconds: float = 5.0,
                 probe: bool = True, probe_timeout: float = 900.0, python: str | None = None,
                 cell_job: Checkpointable | None = None) -> None:
        self.resources = resources or SlurmResources()
        # what each array task calls with (study_dir, cell_id)
        self.cell_job = cell_job or CellJob(self.resources.gpus_per_cell, self.resources.multi_gpu)
        self.wait = wait
        self.poll_seconds = poll_seconds
        self.probe = probe
        self.probe_timeout = probe_timeout
        self.python = python

    def _executor(self, study_dir: Path, **overrides):
        import submitit

        _require_slurm()
        executor = submitit.SlurmExecutor(folder=study_dir / SUBMITIT_FOLDER, max_num_timeout=3, python=self.python)
        executor.update_parameters(**{**self.resources.submitit_parameters(), **overrides})
        return executor

    def check_shared_folder(self, study_dir: Path) -> None:
        """A tiny job on the cells' partition writes a file into the study folder; no file, no grid."""
        marker = study_dir / SUBMITIT_FOLDER / f"probe-{uuid.uuid4().hex[:8]}"
        marker.parent.mkdir(parents=True, exist_ok=True)
        # 10 minutes and USR2 only 30 s before the end: with a 1-minute limit Slurm's USR2@90 (submitit's
        # time-out signal) can reach a slow-starting probe at once, and it ends FAILED (seen under load here)
        executor = self._executor(study_dir, time=10, cpus_per_task=1, job_name="compfair-probe",
                                  array_parallelism=1, signal_delay_s=30)
        executor.parameters.pop("gpus_per_node", None)
        executor.parameters.pop("mem", None)
        job = executor.submit(_probe_write, str(marker))
        print(f"probe job {job.job_id}: can a compute node write to {study_dir}?", file=sys.stderr)
        submitted = time.monotonic()
        deadline = submitted + self.probe_timeout
        while not marker.exists():
            state = job_states([job.job_id]).get(job.job_id)
            if state in FINISHED_STATES or (state is None and time.monotonic() > submitted + 10):
                if marker.exists():
                    break
                raise CompfairError(f"a compute node could not write to {study_dir} (probe job {job.job_id}: "
                                    f"{state or 'left the queue'}; log {job.paths.stderr}: {_last_line(job.paths.stderr)}"
                                    "): put the study folder on a filesystem the nodes share (e.g. your cluster's "
                                    "/home or /scratch)")
            if time.monotonic() > deadline:
                subprocess.run(["scancel", str(job.job_id)], capture_output=True)
                raise CompfairError(f"the probe job {job.job_id} did not run within {self.probe_timeout:.0f} s "
                                    f"(state {state}): check --partition and --account (sinfo lists the partitions)")
            time.sleep(min(self.poll_seconds, 2.0))
        print(f"probe job {job.job_id}: {marker.read_text(encoding='utf-8')} wrote to the study folder",
              file=sys.stderr)
        marker.unlink()

    def run(self, study_dir, cells: list[dict]) -> None:
        study_dir = Path(study_dir).resolve()
        queued = {cell_id: job for cell_id, job in slurm_jobs(study_dir, [cell["id"] for cell in cells]).items()
                  if cell_state("pending", job) in ("pending", "running")}
        for cell_id, job in queued.items():
            print(f"cell {cell_id} is queued or running already as Slurm job {job.job_id}: not submitted again",
                  file=sys.stderr)
        cell_ids = [cell["id"] for cell in cells if cell["id"] not in queued]
        if not cell_ids:
            return
        if self.probe:
            self.check_shared_folder(study_dir)
        executor = self._executor(study_dir)
        jobs = executor.map_array(self.cell_job, [str(study_dir)] * len(cell_ids), cell_ids)
        for index, (cell_id, job) in enumerate(zip(cell_ids, jobs)):
            write_slurm_record(cell_dir(study_dir, cell_id), {
                "job_id": str(job.job_id), "array_task": index, "stdout": str(job.paths.stdout),
                "stderr": str(job.paths.stderr), "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        array_id = str(jobs[0].job_id).split("_")[0]
        print(f"submitted {len(jobs)} cell(s) as Slurm job array {array_id} (at most "
              f"{self.resources.array_parallelism} at once); `compfair study status {study_dir}` shows them",
              file=sys.stderr)
        if self.wait:
            try:
                self._wait(study_dir, cell_ids, [str(job.job_id) for job in jobs])
            except KeyboardInterrupt:  # the jobs are Slurm's now: stop watching, do not cancel them
                print(f"\nstopped waiting; the jobs keep running (scancel {array_id} stops them); "
                      f"`compfair study status {study_dir}` follows them", file=sys.stderr)

    def _wait(self, study_dir: Path, cell_ids: list[str], job_ids: list[str]) -> None:
        from tqdm import tqdm

        left = set(job_ids)
        with tqdm(total=len(job_ids), desc="cells (Slurm)", unit="cell") as bar:
            while left:
                states = job_states(sorted(left))
                ended = {job for job in left if states.get(job) in FINISHED_STATES or job not in states}
                bar.update(len(ended))
                left -= ended
                running = sum(1 for job in left if states.get(job) in ("RUNNING", "COMPLETING"))
                bar.set_postfix(running=running, queued=len(left) - running)
                if left:
                    time.sleep(self.poll_seconds)
        from .status import cell_states

        states = cell_states(study_dir)
        jobs = slurm_jobs(study_dir, cell_ids)
        for cell_id in cell_ids:
            if states.get(cell_id) == "failed":
                record = _read_json(cell_dir(study_dir, cell_id) / "record.json") or {}
                log = cell_dir(study_dir, cell_id) / record.get("log", "cell.log")
                print(f"FAILED {cell_id}: {record.get('error') or 'no record'}; {describe(jobs[cell_id], 'failed')}; "
                      f"cell log: {log}", file=sys.stderr)


def write_slurm_record(cell_dir: Path, record: dict) -> None:
    cell_dir.mkdir(parents=True, exist_ok=True)
    partial = cell_dir / f".{SLURM_RECORD}.partial"
    partial.write_text(json.dumps(record, indent=1), encoding="utf-8")
    os.replace(partial, cell_dir / SLURM_RECORD)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_slurm_record(cell_dir: Path) -> dict | None:
    return _read_json(Path(cell_dir) / SLURM_RECORD)


def _sacct_states(job_ids: list[str]) -> dict[str, str] | None:
    """{job id: state} from accounting, or None where the cluster keeps no accounting (no slurmdbd)."""
    if shutil.which("sacct") is None:
        return None
    answer = subprocess.run(["sacct", "--noheader", "--parsable2", "-X", "-o", "JobID,State", "-j", ",".join(job_ids)],
                            capture_output=True, text=True)
    if answer.returncode != 0:
        return None
    states = {}
    for line in answer.stdout.splitlines():
        job, _, state = line.partition("|")
        states[job] = state.split()[0] if state else state  # "CANCELLED by 0" -> CANCELLED
    return states


def _squeue_states(job_ids: list[str]) -> dict[str, str]:
    arrays = sorted({job.split("_")[0] for job in job_ids})
    answer = subprocess.run(["squeue", "--noheader", "--array", "--states=all", "-o", "%i|%T", "-j", ",".join(arrays)],
                            capture_output=True, text=True)
    states = {}
    for line in answer.stdout.splitlines():
        job, _, state = line.strip().partition("|")
        states[job] = state
    return states


def job_states(job_ids: list[str]) -> dict[str, str]:
    """Slurm's state of each job id it still knows (sacct where it has data, else squeue); unknown ids are absent."""
    if not job_ids:
        return {}
    states = _squeue_states(job_ids)
    accounted = _sacct_states(job_ids)
    if accounted:
        states.update(accounted)
    return {job: states[job] for job in job_ids if job in states}


@dataclass
class SlurmJob:
    job_id: str
    state: str | None  # Slurm's, or None once Slurm no longer lists the job (and keeps no accounting)
    stdout: str
    stderr: str


def slurm_jobs(study_dir, cell_ids: list[str]) -> dict[str, SlurmJob]:
    """The last Slurm job of every cell that was submitted (cells/<id>/slurm.json), with its state: one query."""
    submitted = {cell_id: read_slurm_record(cell_dir(study_dir, cell_id)) for cell_id in cell_ids}
    submitted = {cell_id: record for cell_id, record in submitted.items() if record}
    if not submitted:
        return {}
    states = job_states([record["job_id"] for record in submitted.values()])
    return {cell_id: SlurmJob(record["job_id"], states.get(record["job_id"]), record["stdout"], record["stderr"])
            for cell_id, record in submitted.items()}


def cell_state(state: str, job: SlurmJob | None) -> str:
    """A cell's state (from its record) corrected by its Slurm job: queued is pending, running is running, and
    a job that ended without a done record (cancelled, timed out, node failure, out of memory) failed."""
    if state == "done" or job is None:
        return state
    if job.state in QUEUED_STATES:
        return "pending"
    if job.state in ("RUNNING", "COMPLETING", "CONFIGURING", "STOPPED"):
        return "running"
    return "failed"


def describe(job: SlurmJob, state: str) -> str:
    """What the status table shows of a cell's job: its id and state, and its Slurm log when it failed."""
    text = f"slurm job {job.job_id} {job.state or 'ended (no longer listed by Slurm)'}"
    return text + (f"; slurm log: {job.stderr}" if state == "failed" else "")


def multi_gpu_command(cell: dict, folder: Path, gpus: int, launcher: str = "accelerate") -> list[str]:
    """The cell's lm-eval command (`cells.evaluate_command`) run on `gpus` GPUs as the README documents for lm-eval:

    accelerate  data parallel, one process per GPU (`accelerate launch --multi_gpu -m lm_eval run --model hf`);
    parallelize one process, the model split across the GPUs (`--model_args ...,parallelize=True`);
    vllm        `--model vllm` with tensor_parallel_size=gpus (checkpoint types vLLM supports).
    """
    from .cells import evaluate_command

    if launcher not in MULTI_GPU_LAUNCHERS:
        raise CompfairError(f"multi_gpu {launcher!r} is not one of {', '.join(MULTI_GPU_LAUNCHERS)}: pick one")
    command = evaluate_command(cell, Path(folder))
    python, lm_eval_args = command[0], command[3:]  # [python, -m, lm_eval, run, ...]
    model_args = lm_eval_args.index("--model_args") + 1
    if launcher == "parallelize":
        lm_eval_args[model_args] += ",parallelize=True"
    elif launcher == "vllm":
        lm_eval_args[lm_eval_args.index("--model") + 1] = "vllm"
        lm_eval_args[model_args] += f",tensor_parallel_size={gpus}"
    if launcher == "accelerate":
        return [python, "-m", "accelerate.commands.launch", "--multi_gpu", f"--num_processes={gpus}",
                "-m", "lm_eval", *lm_eval_args]
    return [python, "-m", "lm_eval", *lm_eval_args]
