"""Writing a site folder safely: a lock beside it, a fresh temporary folder, one atomic swap.

A build writes everything into `.<name>.building-*` next to the output folder and then exchanges it with
the output (Linux `renameat2(RENAME_EXCHANGE)`: readers see the old site or the new one, never a mix).
Where the exchange is unavailable, the old site is first renamed aside to `.<name>.previous-*` and put back
by the next build if the swap did not finish. A killed build leaves only a `.building-*` folder, which the
next build removes. The lock is `.<name>.lock` beside the output (fcntl): a second build waits for the
first, up to `timeout` seconds, then stops with a message naming the lock file.

Only a site compfair wrote is replaced: its marker `.compfair_site` (written first, with its own id) lists
the files the build wrote, and a folder holding anything else (a user's NOTES.md added later) is refused,
not merged: the swap replaces the whole folder. A site of an older compfair (a marker without a file list)
is replaced only when it holds nothing but the files a build writes. An output folder that is, contains
or lies inside an input folder is refused (the build would replace the results it reads).
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

from compfair_tasks.errors import CompfairError
from compressors.output import swap_in

MARKER = ".compfair_site"  # written into every site, so that only a site is ever replaced
# what a build of an older compfair (marker without a file list) wrote
LEGACY_SITE_FILES = (MARKER, "index.html", "leaderboard.csv", "paired_tests.csv", "flip_rates.csv", "leaderboard.md",
                     "*.png", "latency")
_LOCAL = threading.local()  # .held: lock paths this thread holds -> depth (re-entrant within one thread only)


class SiteError(CompfairError, RuntimeError):
    """The output folder cannot be written as a site (held by another build, or not a site)."""


def _lock_path(output: Path) -> Path:
    return output.parent / f".{output.name}.lock"


@contextlib.contextmanager
def lock(output: Path, timeout: float = 600.0, poll: float = 0.2):
    """Hold the output folder's lock file; waits for another build up to `timeout` seconds."""
    output = Path(output).absolute()
    output.parent.mkdir(parents=True, exist_ok=True)
    path = str(_lock_path(output))
    held = _LOCAL.__dict__.setdefault("held", {})
    if path in held:
        held[path] += 1
        try:
            yield
        finally:
            held[path] -= 1
        return
    handle = open(path, "a+")
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise SiteError(f"{output}: another leaderboard build holds {path} (waited {timeout:g} s); "
                                    f"wait for it to finish, or remove the lock file if no build is running") from None
                time.sleep(poll)
        held[path] = 1
        try:
            yield
        finally:
            del held[path]
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir() or p.is_symlink())


def _foreign_files(output: Path) -> list[str] | None:
    """Files in a site that its build did not write; None when `output` carries no site marker."""
    try:
        text = (output / MARKER).read_text()
    except OSError:
        return None
    try:
        listed = json.loads(text)["files"]
    except (ValueError, KeyError, TypeError):  # an older compfair's marker: no list, so the names a build writes
        return [p.name for p in sorted(output.iterdir())
                if not any(fnmatch.fnmatch(p.name, pattern) for pattern in LEGACY_SITE_FILES)]
    return sorted(set(_files(output)) - set(listed) - {MARKER})


def _check_replaceable(output: Path) -> None:
    if output.is_file() or (output.exists() and not output.is_dir()):
        raise SiteError(f"{output} is a file, not a folder: give -o a folder path")
    if not output.is_dir() or not any(output.iterdir()):
        return
    foreign = _foreign_files(output)
    if foreign is None:
        raise SiteError(f"{output} holds files and is not a compfair site (no {MARKER}): give -o a new or empty "
                        f"folder (a rebuild replaces the whole folder)")
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise SiteError(f"{output} is a compfair site that also holds files the build did not write ({shown}): "
                        "a rebuild replaces the whole folder, so move them out or give -o another folder")


def _check_inputs(output: Path, inputs) -> None:
    for given in inputs:
        folder = Path(given).expanduser().resolve()
        if output == folder or folder in output.parents or output in folder.parents:
            relation = ("is" if output == folder else "lies inside" if folder in output.parents else "contains")
            raise SiteError(f"-o {output} {relation} the input folder {folder}: a rebuild replaces the whole "
                            "output folder, results read from it included; give -o a folder outside the inputs")


def _recover(output: Path) -> None:
    """Undo what a killed build left: a site renamed aside but not replaced, temporary folders."""
    parent = output.parent
    previous = sorted(parent.glob(f".{output.name}.previous-*"))
    if previous and not output.exists():
        os.rename(previous.pop(), output)
    for leftover in previous + sorted(parent.glob(f".{output.name}.building-*")):
        shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def publish(output: Path, timeout: float = 600.0, inputs=()):
    """Yield a fresh temporary folder; on success it replaces `output` in one swap, on failure it is removed
    and `output` is left as it was. `inputs`: the folders the build reads, which the output may not overlap."""
    output = Path(output).absolute()
    if output.is_symlink():  # replace the folder it points to, not the link
        output = output.resolve()
    _check_inputs(output.resolve(), inputs)
    with lock(output, timeout):
        _recover(output)
        _check_replaceable(output)
        staged = Path(tempfile.mkdtemp(prefix=f".{output.name}.building-", dir=output.parent))
        try:
            marker = {"id": uuid.uuid4().hex, "writer": "compfair leaderboard",
                      "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": []}
            (staged / MARKER).write_text(json.dumps(marker))
            yield staged
            marker["files"] = [f for f in _files(staged) if f != MARKER]  # what a rebuild may replace
            (staged / MARKER).write_text(json.dumps(marker, indent=2))
            os.chmod(staged, 0o755)  # mkdtemp makes it private; a site is meant to be read
            _check_replaceable(output)  # a file the user added while we built is never swapped out
            swap_in(staged, output, previous=".previous-")
        finally:
            if staged.exists():
                shutil.rmtree(staged, ignore_errors=True)
