"""A real single-node Slurm for the tests: munged, slurmctld and slurmd started as root without systemd.

`make slurm` installs Debian's slurm-wlm and munge. `SingleNodeSlurm` fills tests/slurm/slurm.conf into a
temporary folder (state, spool, logs, munge key and socket all live there, on free ports), starts the three
daemons as child processes, waits until `sinfo` shows the node idle, and on `stop()` cancels the jobs of this
cluster, stops exactly the processes it started and deletes its folder. Client commands (sbatch, squeue,
submitit) find the cluster through SLURM_CONF, which `start()` sets.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

CONF_TEMPLATE = Path(__file__).resolve().parent / "slurm" / "slurm.conf"
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sinfo", "sbatch", "squeue", "scancel")


def missing_reason() -> str | None:
    """Why this machine cannot run the single-node cluster, or None when it can."""
    if os.geteuid() != 0:
        return "the Slurm tests start munged/slurmctld/slurmd as root: run them as root (CI does)"
    missing = [name for name in ("mungekey", *DAEMONS, *CLIENTS) if shutil.which(name) is None
               and not Path("/usr/sbin", name).exists()]
    if missing:
        return f"Slurm is not installed ({', '.join(missing)} missing): run `make slurm` (Debian slurm-wlm, munge)"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024 // 2  # half the machine: the node must not claim more than exists
    return 1024


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class SingleNodeSlurm:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="compfair-slurm-"))
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.processes: dict[str, subprocess.Popen] = {}
        self.started_seconds: float | None = None
        self._old_conf = os.environ.get("SLURM_CONF")

    def start(self, timeout: float = 60) -> SingleNodeSlurm:
        began = time.monotonic()
        for sub in ("state", "spool", "log", "munge"):
            (self.root / sub).mkdir(mode=0o700)
        self.conf.write_text(CONF_TEMPLATE.read_text().format(
            root=self.root, host=self.host, ctld_port=_free_port(), slurmd_port=_free_port(),
            memory_mb=_memory_mb()))
        os.environ["SLURM_CONF"] = str(self.conf)
        munge = self.root / "munge"
        subprocess.run([_binary("mungekey"), "--create", f"--keyfile={munge / 'munge.key'}"], check=True)
        self._spawn("munged", [_binary("munged"), "--foreground", "--force", f"--socket={munge / 'munge.socket'}",
                               f"--key-file={munge / 'munge.key'}", f"--pid-file={munge / 'munged.pid'}",
                               f"--log-file={self.root / 'log' / 'munged.log'}", f"--seed-file={munge / 'seed'}"])
        self._wait(lambda: (munge / "munge.socket").exists(), timeout, "munged did not open its socket")
        self._spawn("slurmctld", [_binary("slurmctld"), "-D", "-c", "-i", "-f", str(self.conf)])
        self._spawn("slurmd", [_binary("slurmd"), "-D", "-f", str(self.conf), "-N", self.host])
        self._wait(self._node_idle, timeout, "the node did not become idle in sinfo")
        self.started_seconds = time.monotonic() - began
        return self

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.stdout", "wb")
        self.processes[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True)

    def _node_idle(self) -> bool:
        answer = subprocess.run(["sinfo", "--noheader", "-o", "%t"], capture_output=True, text=True)
        return answer.returncode == 0 and answer.stdout.strip() == "idle"

    def _wait(self, condition, timeout: float, failure: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}: {self.logs()}")
            if condition():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{failure} within {timeout:.0f} s: {self.logs()}")

    def logs(self) -> str:
        tails = []
        for log in sorted((self.root / "log").glob("*")):
            tails.append(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))
        return "\n".join(tails)

    def squeue(self) -> str:
        return subprocess.run(["squeue", "--noheader", "-o", "%i %T"], capture_output=True, text=True).stdout

    def stop(self) -> None:
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--full", "--user", "root"], capture_output=True)  # this cluster's jobs only
            deadline = time.monotonic() + 30
            while self.squeue().strip() and any(state in self.squeue() for state in ("RUNNING", "COMPLETING")):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.5)
        for name in reversed(DAEMONS):
            process = self.processes.get(name)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = self._old_conf
        shutil.rmtree(self.root, ignore_errors=True)
