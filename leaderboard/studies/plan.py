"""The plan of a study: series member x compression -> cells (plan.json, in order), and the study folder's layout."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .series import expand
from .spec import Compression, Spec

PLAN = "plan.json"
STUDY = "study.json"
SPEC_COPY = "spec.yaml"
CELLS = "cells"
QUANTIZED_METHODS = ("dynamic-int8", "int8-per-token")  # checkpoints that lm_eval loads as compfair-quantized


def write_json(path: Path, data) -> None:
    """Written whole, then renamed: a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(data, indent=1, sort_keys=False), encoding="utf-8")
    os.replace(partial, path)


def cell_id(series: str, member_label: str, compression_label: str) -> str:
    """Filesystem-safe, stable and readable: `pythia-70m-deduped@step1000+dynamic-int8`."""
    return re.sub(r"[^A-Za-z0-9._@+-]+", "_", f"{series}@{member_label}+{compression_label}")


def _compression(compression: Compression) -> dict:
    return {"method": compression.method, "level": compression.level, "label": compression.label,
            "options": dict(compression.options)}


def build_cells(spec: Spec, members: list[dict]) -> list[dict]:
    cells = []
    for member in members:
        series = spec.series[member["series_order"]]
        for compression in series.get("compressions", spec.compressions):
            cells.append({
                "id": cell_id(member["series"], member["member"]["label"], compression.label),
                "series": member["series"], "series_order": member["series_order"], "axis": member["axis"],
                "member": member["member"], "compression": _compression(compression),
                "lm_eval_model": "compfair-quantized" if compression.method in QUANTIZED_METHODS else "hf",
                "tasks": list(series.get("tasks", spec.tasks)), "limit": spec.limit, "batch_size": spec.batch_size,
                "seed": spec.seed, "metadata": {**spec.metadata, **series.get("metadata", {})},
                "gen_kwargs": series.get("gen_kwargs", spec.gen_kwargs),
                "model_args": _series_model_args(spec, member["series_order"]), "device": spec.device,
            })
    ids = [c["id"] for c in cells]
    for i, found in enumerate(ids):
        if ids.index(found) != i:
            raise spec.located.error(("series",), f"two cells would be named {found!r}",
                                     "give the series' members distinct labels")
    return cells


def _series_model_args(spec: Spec, order: int) -> str:
    series = spec.series[order]
    parts = [part for part in (spec.model_args, series.get("model_args", "")) if part]
    if series.get("backend"):
        parts.append(f"backend={series['backend']}")
    return ",".join(parts)


def make_plan(spec: Spec, check: bool = True) -> list[dict]:
    """Every cell of the spec, after checking every member (revisions exist, configs load)."""
    return build_cells(spec, expand(spec, check=check))


def write_plan(study_dir: Path, spec: Spec, cells: list[dict]) -> None:
    study_dir.mkdir(parents=True, exist_ok=True)
    (study_dir / SPEC_COPY).write_text(spec.text, encoding="utf-8")
    write_json(study_dir / STUDY, {"format": 1, "name": spec.name, "control": spec.control,
                                   "executor": spec.executor})
    write_json(study_dir / PLAN, cells)


def _read(study_dir, name: str):
    from compfair_tasks.errors import CompfairError

    path = Path(study_dir) / name
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError:
        raise CompfairError(f"{path} not found: give a folder made by `compfair study run`") from None


def load_study(study_dir) -> dict:
    """{"name", "control", "executor"} of the spec as run."""
    return _read(study_dir, STUDY)


def load_plan(study_dir) -> list[dict]:
    """The cell dicts of a study folder, in plan order."""
    return _read(study_dir, PLAN)


def cell_dir(study_dir, cell_id: str) -> Path:
    return Path(study_dir) / CELLS / cell_id
