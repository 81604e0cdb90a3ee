"""What each cell of a study is: done, failed, running or pending (from its record, read against the plan)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from .cells import RECORD, RUNNING, is_done, read_record, settings_key
from .plan import cell_dir, load_plan


def _running(folder: Path) -> bool:
    try:
        marker = json.loads((folder / RUNNING).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if marker.get("host") != socket.gethostname():
        return True  # another machine's process (a Slurm node): trust the marker
    try:
        os.kill(int(marker["pid"]), 0)
    except (ProcessLookupError, ValueError, KeyError):
        return False  # the process that wrote it is gone: the cell was interrupted
    except PermissionError:
        return True
    return True


def cell_state(study_dir, cell: dict) -> str:
    folder = cell_dir(study_dir, cell["id"])
    record = read_record(folder)
    if is_done(record, settings_key(cell)):
        return "done"
    if _running(folder):
        return "running"
    if record and record.get("status") == "failed" and record.get("settings_key") == settings_key(cell):
        return "failed"
    return "pending"


def cell_states(study_dir) -> dict[str, str]:
    """{cell_id: "done" | "failed" | "running" | "pending"}, in plan order (a submitted cell: as Slurm sees it)."""
    from . import slurm

    states = {cell["id"]: cell_state(study_dir, cell) for cell in load_plan(study_dir)}
    jobs = slurm.slurm_jobs(study_dir, list(states))
    return {cell_id: slurm.cell_state(state, jobs.get(cell_id)) for cell_id, state in states.items()}


def summary(study_dir) -> str:
    """The status table: one line per cell (state, seconds, error and log of a failed one) and the totals."""
    from . import slurm

    study_dir = Path(study_dir)
    lines, counts = [], {"done": 0, "running": 0, "failed": 0, "pending": 0}
    states = cell_states(study_dir)
    jobs = slurm.slurm_jobs(study_dir, list(states))
    for cell_id, state in states.items():
        counts[state] += 1
        folder = cell_dir(study_dir, cell_id)
        record = read_record(folder) if (folder / RECORD).exists() else None
        detail = ""
        if state == "done":
            detail = f"{record.get('seconds', 0):.0f} s"
        elif state == "failed" and record:
            detail = f"{record.get('error')}; log: {folder / record.get('log', 'cell.log')}"
        if cell_id in jobs:
            detail = f"{detail}  [{slurm.describe(jobs[cell_id], state)}]"
        lines.append(f"  {state:<8} {cell_id}  {detail}".rstrip())
    lines.append(f"{counts['done']} done, {counts['running']} running, {counts['failed']} failed, "
                 f"{counts['pending']} left (of {sum(counts.values())})")
    return "\n".join(lines)
