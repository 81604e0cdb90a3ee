"""`compfair_compression.json`: what a compressor did, written beside every checkpoint it saves."""

from __future__ import annotations

import json
import time
from pathlib import Path

from compfair_tasks.measure import checkpoint_size_bytes

FILE_NAME = "compfair_compression.json"


def count_parameters(model) -> int:
    """Parameters of the model proper: a pruned model's zero placeholder heads do not count."""
    placeholders = getattr(model, "placeholder_parameter_count", None)
    return sum(p.numel() for p in model.parameters()) - (placeholders() if placeholders else 0)


def software_versions(model=None) -> dict:
    """compfair's version and git commit (in a checkout), the libraries' versions, the checkpoint format."""
    from compfair_tasks.versions import software_versions as code_versions

    config = getattr(model, "config", None)
    return {**code_versions(), "format_version": getattr(config, "compfair_format_version", None)}


def write_compression_metadata(output_dir, *, method: str, source_model: str, settings: dict, seed: int,
                               removed: dict | None = None, extra: dict | None = None, model=None) -> dict:
    """Write compfair_compression.json into `output_dir` (after the checkpoint is saved) and return it.

    The compressors call this inside compressors.output.staged_output: the folder appears under its
    final name only with its record, so weights without a record are never a finished output."""
    record = {
        "method": method,
        "source_model": str(source_model),
        "settings": settings,
        "seed": seed,
        "removed": removed or {},
        "size_bytes": checkpoint_size_bytes(output_dir),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": software_versions(model),
    }
    if model is not None:
        record["params"] = count_parameters(model)
    record.update(extra or {})
    path = Path(output_dir) / FILE_NAME
    unfinished = path.with_name(FILE_NAME + ".tmp")
    unfinished.write_text(json.dumps(record, indent=2, default=str))
    unfinished.replace(path)  # whole or absent, never a cut-off record
    return record


def read_compression_metadata(checkpoint_dir) -> dict | None:
    path = Path(checkpoint_dir) / FILE_NAME
    return json.loads(path.read_text()) if path.is_file() else None
