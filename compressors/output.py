"""The --output folder of every compressor: checked before any work, built beside it, swapped in last.

The rule: compfair deletes or replaces only a folder it can prove it wrote, and never leaves a half-written
model where a finished one is expected.

`prepare_output(output, sources=[model], overwrite=args.overwrite)` runs before anything is loaded and
writes nothing. It refuses, in one line naming the folder and the fix:
- an output that is, lies inside or contains a source model (a hub id counts as its cached snapshot), or
  lies inside the Hugging Face cache (never allowed, not even with --overwrite);
- a file, or a path under a file; a folder whose parent cannot be written; the current folder (or one
  containing it: the swap would pull it from under the shell);
- an existing non-empty folder compfair did not write (see `ownership`): never replaced;
- a folder compfair wrote (a finished model, or another command's unfinished run), unless --overwrite.

`with staged_output(output, overwrite=..., writer="compfair compress prune") as folder:` yields a fresh
temporary folder `.<name>.compfair-partial-*` beside the output, whose marker (`.compfair_output`, with
its own id) is written first. Everything is saved and checked there; when the block ends without an
error the marker gets the list of files written and the folder is swapped in with one rename (the old
output, if any, is exchanged out and then removed). An error removes the temporary folder and leaves
the old output as it was; a killed run leaves only the temporary folder, which the next run to that
output removes (the builder holds a lock on its marker, so a running build's folder is never taken).

Proof of authorship (`ownership`): the marker `.compfair_output` and no file beyond those it lists. A
folder written by an older compfair (no marker) counts as ours when it holds `compfair_compression.json`
and nothing but checkpoint files (LEGACY_FILES); a user's notes, scripts or subfolders in it make it
not ours, and it is refused.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import fnmatch
import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from compfair_tasks.errors import CompfairError

MARKER = ".compfair_output"
PARTIAL = ".compfair-partial-"  # `.<output name>.compfair-partial-<random>`: a build not swapped in yet
PREVIOUS = ".compfair-previous-"  # the old output while a swap without renameat2 is under way
RECORD = "compfair_compression.json"
# files that make a folder a checkpoint (what save_pretrained / the compressors write)
MODEL_MARKERS = ("config.json", RECORD, "*.safetensors", "pytorch_model*.bin")
# what older compfair versions (no marker) wrote into an output: only these may be replaced without a marker
LEGACY_FILES = MODEL_MARKERS + (
    "generation_config.json", "*.safetensors.index.json", "pytorch_model*.bin.index.json", "training_args.bin",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "merges.txt", "tokenizer.model", "chat_template.jinja", "compfair_source.json", "recipe.yaml",
    "pruned_gpt2.py", "pruned_llama.py",
)
LEGACY_FOLDERS = ("checkpoints",)  # distill's, with their own proof (_carries_proof)
DISTILL_SETTINGS = "compfair_distill_settings.json"


class OutputFolderError(CompfairError, ValueError):
    """The --output path would overwrite or mix with something compfair may not replace."""


def holds_model(folder: Path) -> list[str]:
    """Names of the checkpoint files directly in `folder` that make it a model folder (sorted)."""
    if not folder.is_dir():
        return []
    return sorted({p.name for pattern in MODEL_MARKERS for p in folder.glob(pattern) if p.is_file()})


# --------------------------------------------------------------------------- proof of authorship

def read_marker(folder: Path) -> dict | None:
    try:
        marker = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("id") else None


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir() or p.is_symlink())


def ownership(folder: Path, also_ours: tuple[str, ...] = ()) -> tuple[bool, str]:
    """(True, what) when compfair provably wrote everything in `folder`; (False, why not) otherwise.

    `also_ours`: subfolders that count as ours when they carry their own proof (distill's checkpoints/).
    """
    folder = Path(folder)
    marker = read_marker(folder)
    own = {name for name in also_ours if _carries_proof(folder / name)}
    inside = [f for f in _files(folder) if f.split("/")[0] not in own]
    if marker is not None:
        listed = set(marker.get("files") or []) | {MARKER}
        foreign = [f for f in inside if f not in listed]
        if foreign:
            return False, f"it holds files compfair did not write ({_some(foreign)})"
        return True, "complete" if marker.get("complete") else "unfinished"
    if (folder / RECORD).is_file():  # an older compfair's output: its files and nothing else
        top = sorted({f.split("/")[0] for f in inside})
        foreign = [n for n in top if not (any(fnmatch.fnmatch(n, p) for p in LEGACY_FILES) and (folder / n).is_file())]
        if foreign:
            return False, f"besides an older compfair output it holds other files ({_some(foreign)})"
        return True, "complete"
    if own and not inside:  # an older distill run killed before it saved its student
        return True, "unfinished"
    return False, f"compfair did not write it (no {MARKER}; it holds {_some(sorted(p.name for p in folder.iterdir()))})"


def _carries_proof(subfolder: Path) -> bool:
    """distill's checkpoints/: its marker, or (older compfair) the run's settings file written beside them."""
    return subfolder.is_dir() and any((subfolder / name).is_file() for name in (MARKER, DISTILL_SETTINGS))


def _some(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


# --------------------------------------------------------------------------- the check before any work

def _local_folder(source) -> Path | None:
    path = Path(os.fspath(source)).expanduser()
    if path.exists():
        return path.resolve()
    from compfair_tasks.models import cached_snapshot

    return cached_snapshot(str(source))  # a hub id: the snapshot it loads from, when cached


def _overlap_error(output: Path, source: Path, given: str) -> OutputFolderError | None:
    if output == source:
        relation = "is the source model folder"
    elif source in output.parents:
        relation = "lies inside the source model folder"
    elif output in source.parents:
        relation = "contains the source model folder"
    else:
        return None
    return OutputFolderError(f"--output {given} {relation} {source}: the source would be overwritten or mixed "
                             "with the result; choose a separate --output folder (--overwrite does not allow this)")


def _protected_caches() -> list[Path]:
    from huggingface_hub import constants

    return [Path(constants.HF_HUB_CACHE).expanduser().resolve()]


EMBEDDED_HELP = "embedded model name (smollm2-135m: SmolLM2-135M-Instruct dequantized from a Q4_1 GGUF)"


def add_model_and_output_arguments(parser, what: str, models: str = "a causal LM") -> None:
    """--model, --output and --overwrite, spelt and explained alike by every one-shot compressor."""
    parser.add_argument("--model", required=True, help=f"checkpoint folder, {EMBEDDED_HELP} or hub id of {models}")
    parser.add_argument("--output", required=True, help=f"new or empty folder for the {what} checkpoint (an "
                                                        "earlier compfair output is replaced with --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier compfair output in --output "
                                                                 "(only once the new one has passed its checks)")


def target_folder(output) -> Path:
    """The absolute folder `output` names; a symlink is followed (the folder it points to is the one replaced)."""
    return Path(os.fspath(output)).expanduser().resolve()


def prepare_output(output, sources=(), overwrite: bool = False, resuming: bool = False) -> Path:
    """Check `output` against the rules above without writing anything; return the folder it names.

    `resuming=True` (distill continuing its own run) accepts a compfair output, finished or not, without
    --overwrite; every other rule still holds.
    """
    given = os.fspath(output)
    resolved = target_folder(output)
    for source in sources:
        source_folder = _local_folder(source) if source is not None else None
        error = source_folder and _overlap_error(resolved, source_folder, given)
        if error:
            raise error
    for cache in _protected_caches():
        if resolved == cache or cache in resolved.parents or resolved in cache.parents:
            raise OutputFolderError(f"--output {given} overlaps the Hugging Face cache {cache}, whose models other "
                                    "runs load; choose a folder outside it")
    here = Path.cwd().resolve()
    if resolved == here or resolved in here.parents:
        raise OutputFolderError(f"--output {given} is or contains the current folder {here}, which the new output "
                                "would replace under your shell; name a folder inside it, e.g. --output ./model")
    blocking = next((p for p in [resolved, *resolved.parents] if p.exists() and not p.is_dir()), None)
    if blocking == resolved:
        raise OutputFolderError(f"--output {given} is an existing file, not a folder: compfair never replaces a "
                                "file it did not write; choose another --output")
    if blocking is not None:
        raise OutputFolderError(f"--output {given}: {blocking} is a file, so no folder can be made under it; "
                                "choose another --output")
    if resolved.is_dir() and any(resolved.iterdir()):
        ours, what = ownership(resolved, also_ours=LEGACY_FOLDERS)
        if not ours:
            raise OutputFolderError(f"--output {given} is not empty and {what}: compfair replaces only its own "
                                    "outputs; choose a new or empty --output folder")
        if not overwrite and not resuming:
            held = (f"a compfair output ({', '.join(holds_model(resolved)) or MARKER})" if what == "complete"
                    else f"an unfinished run of {(read_marker(resolved) or {}).get('writer', 'compfair')}")
            raise OutputFolderError(f"--output {given} already holds {held}: choose another --output, or pass "
                                    "--overwrite to replace it once the new one has passed its checks")
    existing = next(p for p in [resolved, *resolved.parents] if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK) or (existing == resolved and not os.access(resolved.parent, os.W_OK)):
        raise OutputFolderError(f"--output {given}: {existing if existing != resolved else resolved.parent} is not "
                                "writable; choose a writable --output")
    return Path(given).expanduser()


# --------------------------------------------------------------------------- building beside, swapping in

def _new_marker(writer: str) -> dict:
    return {"id": uuid.uuid4().hex, "writer": writer, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "complete": False, "files": []}


def mark_unfinished(folder: Path, writer: str) -> None:
    """Create `folder` (if need be) and mark it as a compfair run's unfinished work (distill's training
    folder), unless it already carries a marker."""
    folder.mkdir(parents=True, exist_ok=True)
    if read_marker(folder) is None:
        (folder / MARKER).write_text(json.dumps(_new_marker(writer), indent=2))


def partial_path(target: Path, tag: str) -> Path:
    """The temporary folder named `tag` beside `target` (for runs whose processes must agree on it)."""
    return target.parent / f".{target.name}{PARTIAL}{tag}"


class Staging:
    """A temporary folder beside `target`, marked as compfair's and locked while this process builds in it."""

    def __init__(self, target: Path, writer: str, tag: str | None = None):
        self.target = target
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(target)
        if tag is None:
            self.folder = Path(tempfile.mkdtemp(prefix=f".{target.name}{PARTIAL}", dir=target.parent))
        else:  # a name every process of a multi-process run can compute
            self.folder = partial_path(target, tag)
            self.folder.mkdir()
        self.marker = _new_marker(writer)
        self._handle = open(self.folder / MARKER, "w")  # noqa: SIM115 - held (and flock-ed) until close()
        fcntl.flock(self._handle, fcntl.LOCK_EX)
        self._write_marker()

    def _write_marker(self) -> None:
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(json.dumps(self.marker, indent=2))
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def publish(self, overwrite: bool, given: str | None = None, also_ours: tuple[str, ...] = ()) -> None:
        """Record the files written, then put the folder in place of the target (see the module doc)."""
        given = given or str(self.target)
        self.marker.update(complete=True, files=[f for f in _files(self.folder) if f != MARKER])
        self._write_marker()
        os.chmod(self.folder, 0o755)  # mkdtemp makes it private; a checkpoint is meant to be read
        with _parent_lock(self.target):
            if self.target.exists() and not self.target.is_dir():
                raise OutputFolderError(f"--output {given} became a file while compfair was writing; nothing was "
                                        "replaced; choose another --output")
            if self.target.is_dir() and any(self.target.iterdir()):
                ours, what = ownership(self.target, also_ours)
                if not ours:
                    raise OutputFolderError(f"--output {given}: {what} (added while compfair was writing); nothing "
                                            "was replaced: move those files out and run again")
                if not overwrite:
                    raise OutputFolderError(f"--output {given} received another compfair output while this one was "
                                            "written; nothing was replaced: pass --overwrite or choose another --output")
            swap_in(self.folder, self.target)

    def close(self) -> None:
        """Release the lock; remove the folder if it was not swapped in."""
        with contextlib.suppress(OSError):
            self._handle.close()
        if self.folder.exists():
            shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def staged_output(output, *, overwrite: bool = False, writer: str = "compfair"):
    """Yield a fresh temporary folder to save into; on success it replaces `output` (module doc)."""
    staging = Staging(target_folder(output), writer)
    try:
        yield staging.folder
        staging.publish(overwrite, os.fspath(output))
    finally:
        staging.close()


def remove_stale(target: Path) -> None:
    """Remove what killed builds of `target` left beside it (never a running build's folder)."""
    parent = target.parent
    if not parent.is_dir():
        return
    previous = sorted(parent.glob(f".{target.name}{PREVIOUS}*"))
    if previous and not target.exists():  # killed between the two renames of a swap: put the old output back
        os.rename(previous.pop(), target)
    for leftover in previous + sorted(parent.glob(f".{target.name}{PARTIAL}*")):
        marker = leftover / MARKER
        if not leftover.is_dir() or leftover.is_symlink():
            continue
        if not marker.is_file():
            with contextlib.suppress(OSError):
                leftover.rmdir()  # killed before its marker was written: empty
            continue
        with open(marker) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # another run is building there now
            shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def _parent_lock(target: Path):
    """Serialise swaps into one folder's parent (two runs finishing at once)."""
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def swap_in(staged: Path, target: Path, previous: str = PREVIOUS) -> None:
    """Put `staged` where `target` is: one rename, or an exchange whose old half is then removed. Without the
    exchange the old one is first renamed aside to `.<name><previous><id>` (which the next run puts back)."""
    if not target.exists():
        os.rename(staged, target)
        return
    if _exchange(staged, target):
        shutil.rmtree(staged, ignore_errors=True)  # now holds the old output
        return
    aside = target.parent / f".{target.name}{previous}{os.getpid()}-{time.time_ns()}"
    os.rename(target, aside)  # a kill between these two renames is undone by the next run's remove_stale
    os.rename(staged, target)
    shutil.rmtree(aside, ignore_errors=True)
