"""The one check every compressor runs on its --output folder before it writes a checkpoint there.

`prepare_output(output, sources=[model], overwrite=args.overwrite)` refuses, naming the fix:
- an output that is a source model folder, lies inside one, or contains one (never allowed:
  `--overwrite` must not destroy the model being compressed, nor nest one model inside another);
- an output folder that already holds a model (config.json, weights, compfair_compression.json),
  or an output path that is an existing file, unless `overwrite` (then those files are removed;
  other files and subfolders stay).
It returns the folder, created. `resuming=True` (distill continuing its own checkpoints/) skips the
"already holds a model" check, not the others.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from compfair_tasks.errors import CompfairError

# files that make a folder a checkpoint (what save_pretrained / the compressors write)
MODEL_MARKERS = ("config.json", "compfair_compression.json", "*.safetensors", "pytorch_model*.bin")
CHECKPOINT_FILES = MODEL_MARKERS + (
    "generation_config.json", "*.safetensors.index.json", "pytorch_model*.bin.index.json", "training_args.bin",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "merges.txt", "tokenizer.model", "chat_template.jinja", "compfair_source.json",
)


class OutputFolderError(CompfairError, ValueError):
    """The --output path would overwrite or mix with a model."""


def holds_model(folder: Path) -> list[str]:
    """Names of the checkpoint files directly in `folder` that make it a model folder (sorted)."""
    if not folder.is_dir():
        return []
    return sorted({p.name for pattern in MODEL_MARKERS for p in folder.glob(pattern) if p.is_file()})


def _local_folder(source) -> Path | None:
    path = Path(os.fspath(source)).expanduser()
    return path.resolve() if path.exists() else None  # hub ids and embedded names are no folder here


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


EMBEDDED_HELP = "embedded model name (smollm2-135m: SmolLM2-135M-Instruct dequantized from a Q4_1 GGUF)"


def add_model_and_output_arguments(parser, what: str, models: str = "a causal LM") -> None:
    """--model, --output and --overwrite, spelt and explained alike by every one-shot compressor."""
    parser.add_argument("--model", required=True, help=f"checkpoint folder, {EMBEDDED_HELP} or hub id of {models}")
    parser.add_argument("--output", required=True, help=f"new folder for the {what} checkpoint (refused if it is "
                                                        "the source or holds a model, unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace a model already in --output")


def prepare_output(output, sources=(), overwrite: bool = False, resuming: bool = False) -> Path:
    """Check `output` against the rules above, clear it if `overwrite`, create it, and return it."""
    given = os.fspath(output)
    folder = Path(given).expanduser()
    resolved = folder.resolve()
    for source in sources:
        source_folder = _local_folder(source) if source is not None else None
        error = source_folder and _overlap_error(resolved, source_folder, given)
        if error:
            raise error
    blocking = next((p for p in [resolved, *resolved.parents] if p.exists() and not p.is_dir()), None)
    if blocking is not None and blocking != resolved:
        raise OutputFolderError(f"--output {given}: {blocking} is a file, so no folder can be made under it; "
                                "choose another --output")
    if blocking == resolved:
        if not overwrite:
            raise OutputFolderError(f"--output {given} is an existing file, not a folder: choose another --output, "
                                    "or pass --overwrite to replace the file with the checkpoint folder")
        resolved.unlink()
    found = holds_model(resolved)
    if found and not resuming:
        if not overwrite:
            raise OutputFolderError(f"--output {given} already holds a model ({', '.join(found)}): choose another "
                                    "--output, or pass --overwrite to replace it")
        for pattern in CHECKPOINT_FILES:
            for path in resolved.glob(pattern):
                if path.is_file() or path.is_symlink():
                    path.unlink()
    try:
        resolved.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputFolderError(f"--output {given}: cannot create the folder ({error.strerror}); choose a "
                                "writable --output") from error
    if not os.access(resolved, os.W_OK):
        raise OutputFolderError(f"--output {given} is not writable: choose a writable --output")
    return folder


@contextlib.contextmanager
def removed_on_failure(output):
    """Delete what the block wrote into `output` if it raises: a checkpoint that failed its checks after
    being saved (the library methods check what they reload from disk) must not look like a result."""
    folder = Path(output)
    before = {p for p in folder.iterdir()} if folder.is_dir() else set()
    try:
        yield folder
    except BaseException:
        for path in (set(folder.iterdir()) - before) if folder.is_dir() else ():
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        raise
