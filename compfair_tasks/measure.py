"""Measurements of a checkpoint that compressors and the leaderboard both record: forward latency and size on disk.

Latency is the median wall time of one forward pass over `batch_size` x `seq_len` tokens, after warm-up, on
the given device and thread count; it compares models only when measured on the same machine under the same
load, so `compfair_latency.json` records those settings next to the number.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

LATENCY_FILE = "compfair_latency.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
# files with a weight suffix that a Trainer writes beside the weights: training state, not model size
TRAINING_STATE = ("training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state")


def weight_files(checkpoint) -> list[Path]:
    """The model weight files of a checkpoint folder: top level only, so `checkpoints/` and optimizer state
    (distill --keep-checkpoints) are not counted as model size."""
    return sorted(p for p in Path(checkpoint).iterdir()
                  if p.is_file() and p.suffix in WEIGHT_SUFFIXES and not p.name.startswith(TRAINING_STATE))


def checkpoint_size_bytes(checkpoint) -> int:
    """Bytes of a checkpoint's model weight files (0 when it has none)."""
    return sum(p.stat().st_size for p in weight_files(checkpoint))


def _load(checkpoint: Path):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    config = AutoConfig.from_pretrained(checkpoint)
    auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    return auto.from_pretrained(checkpoint)


def measure_latency(model, save_to: str | Path | None = None, seq_len: int = 128, batch_size: int = 1,
                    repeats: int = 10, warmup: int = 2, threads: int | None = None, device: str = "cpu",
                    seed: int = 0) -> dict:
    """Median forward latency (ms) of `model` (a loaded model, or a checkpoint folder).

    A checkpoint folder also receives compfair_latency.json (or `save_to`, when given).
    """
    import torch

    if isinstance(model, (str, Path)):
        save_to = Path(model) if save_to is None else save_to
        model = _load(Path(model))
    if threads:
        torch.set_num_threads(threads)
    model = model.to(device).eval()
    generator = torch.Generator().manual_seed(seed)
    vocab = int(getattr(model.config, "vocab_size", 1000))
    inputs = {"input_ids": torch.randint(0, vocab, (batch_size, seq_len), generator=generator).to(device),
              "use_cache": False}  # one forward pass, without building a KV cache
    if getattr(model.config, "is_encoder_decoder", False):
        inputs["decoder_input_ids"] = inputs["input_ids"][:, :1]
    times = []
    with torch.inference_mode():
        for step in range(warmup + repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            began = time.perf_counter()
            model(**inputs)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if step >= warmup:
                times.append((time.perf_counter() - began) * 1000)
    record = {"latency_ms": statistics.median(times), "seq_len": seq_len, "batch_size": batch_size,
              "repeats": repeats, "threads": torch.get_num_threads(), "device": device,
              "torch": torch.__version__, "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if save_to is not None:
        target = Path(save_to)
        target = target / LATENCY_FILE if target.is_dir() else target
        target.write_text(json.dumps(record, indent=2))
    return record
