"""Writing a site folder safely: a lock beside it, a fresh temporary folder, one atomic swap.

A build writes everything into `.<name>.building-*` next to the output folder and then exchanges it with
the output (Linux `renameat2(RENAME_EXCHANGE)`: readers see the old site or the new one, never a mix).
Where the exchange is unavailable, the old site is first renamed aside to `.<name>.previous-*` and put back
by the next build if the swap did not finish. A killed build leaves only a `.building-*` folder, which the
next build removes. The lock is `.<name>.lock` beside the output (fcntl): a second build waits for the
first, up to `timeout` seconds, then stops with a message naming the lock file.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

MARKER = ".compfair_site"  # written into every site, so that only a site is ever replaced
_LOCAL = threading.local()  # .held: lock paths this thread holds -> depth (re-entrant within one thread only)


class SiteError(RuntimeError):
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


def _check_replaceable(output: Path) -> None:
    if output.is_file() or (output.exists() and not output.is_dir()):
        raise SiteError(f"{output} is a file, not a folder: give -o a folder path")
    is_site = (output / MARKER).exists() or all((output / f).is_file() for f in ("index.html", "leaderboard.csv"))
    if output.is_dir() and any(output.iterdir()) and not is_site:
        raise SiteError(f"{output} holds files and is not a compfair site: give -o a new or empty folder "
                        f"(a rebuild replaces the whole folder)")


def _recover(output: Path) -> None:
    """Undo what a killed build left: a site renamed aside but not replaced, temporary folders."""
    parent = output.parent
    previous = sorted(parent.glob(f".{output.name}.previous-*"))
    if previous and not output.exists():
        os.rename(previous.pop(), output)
    for leftover in previous + sorted(parent.glob(f".{output.name}.building-*")):
        shutil.rmtree(leftover, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _swap_in(staged: Path, output: Path) -> None:
    if not output.exists():
        os.rename(staged, output)
        return
    if _exchange(staged, output):
        shutil.rmtree(staged, ignore_errors=True)  # now holds the old site
        return
    aside = output.parent / f".{output.name}.previous-{os.getpid()}-{time.time_ns()}"
    os.rename(output, aside)  # a kill between these two renames is undone by the next build's _recover
    os.rename(staged, output)
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def publish(output: Path, timeout: float = 600.0):
    """Yield a fresh temporary folder; on success it replaces `output` in one swap, on failure it is removed
    and `output` is left as it was."""
    output = Path(output).absolute()
    if output.is_symlink():  # replace the folder it points to, not the link
        output = output.resolve()
    with lock(output, timeout):
        _recover(output)
        _check_replaceable(output)
        staged = Path(tempfile.mkdtemp(prefix=f".{output.name}.building-", dir=output.parent))
        try:
            (staged / MARKER).write_text("written by compfair leaderboard; the folder is replaced on rebuild\n")
            yield staged
            os.chmod(staged, 0o755)  # mkdtemp makes it private; a site is meant to be read
            _swap_in(staged, output)
        finally:
            if staged.exists():
                shutil.rmtree(staged, ignore_errors=True)
