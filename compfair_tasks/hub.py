"""The Hugging Face side every task shares: is the hub offline, and the evaluated model's tokenizer and config.

lm-eval copies `--model_args` into each task's metadata, so a task can load what the model runs with:
the tokenizer and config are loaded with the arguments lm-eval's HF model (HFLM) passes
(`revision`, `trust_remote_code`, `gguf_file`, `subfolder`, `add_bos_token`), from the same names.
"""

from __future__ import annotations

import os

# any one set to a true value stops a download: the hub client, transformers and datasets each read their own
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
TRUE_WORDS = ("1", "true", "yes", "on")


def offline() -> str | None:
    """The name of the first offline variable that is set (for messages), or None when downloads are allowed."""
    return next((name for name in OFFLINE_VARIABLES if os.environ.get(name, "").strip().lower() in TRUE_WORDS), None)


def flag(value) -> bool:
    """A boolean model argument as lm-eval passes it (a bool, or text such as "True")."""
    return value if isinstance(value, bool) else str(value).strip().lower() in TRUE_WORDS


def model_name(metadata: dict | None) -> str | None:
    """The tokenizer the evaluated model runs with: `tokenizer=` if given, else `pretrained=`."""
    metadata = metadata or {}
    name = metadata.get("tokenizer") or metadata.get("pretrained")
    return name if isinstance(name, str) and name else None


def _common(metadata: dict) -> dict:
    options = {"trust_remote_code": flag(metadata.get("trust_remote_code", False))}
    for key in ("revision", "subfolder"):
        if isinstance(metadata.get(key), str) and metadata[key]:
            options[key] = metadata[key]
    return options


def load_tokenizer(metadata: dict | None):
    """The evaluated model's tokenizer, loaded as HFLM loads it; None when the metadata names no model.

    Loading errors propagate: each task decides whether that stops it or only costs a statistic.
    """
    metadata = metadata or {}
    name = model_name(metadata)
    if name is None:
        return None
    from transformers import AutoTokenizer

    options = _common(metadata)
    if not metadata.get("tokenizer") and isinstance(metadata.get("gguf_file"), str):
        options["gguf_file"] = metadata["gguf_file"]  # the tokenizer is inside the GGUF file
    if metadata.get("add_bos_token") is not None:
        options["add_bos_token"] = flag(metadata["add_bos_token"])
    return AutoTokenizer.from_pretrained(name, **options)


def load_config(metadata: dict | None):
    """The evaluated model's config (from `pretrained=`, else the tokenizer's name), loaded as HFLM loads it."""
    metadata = metadata or {}
    name = metadata.get("pretrained") if isinstance(metadata.get("pretrained"), str) else model_name(metadata)
    if not name:
        return None
    from transformers import AutoConfig

    options = _common(metadata)
    if isinstance(metadata.get("gguf_file"), str) and name == metadata.get("pretrained"):
        options["gguf_file"] = metadata["gguf_file"]
    return AutoConfig.from_pretrained(name, **options)
