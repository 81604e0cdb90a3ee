"""What a saved checkpoint really holds: bits, sparsity and bytes measured from its weight files.

The leaderboard's bits/sparsity columns come from here, never from the recipe (lm-eval #973: "4-bit"
and "8-bit" runs with identical scores that were never quantized). `measure_weights` reads only the
model's weight files (top-level `*.safetensors` / `pytorch_model*.bin`; not `checkpoints/`, optimizer
or trainer state) and reports, over the linear layers of the transformer blocks (embeddings, LM head
and norms left out, as every compressor here leaves them):

- `sparsity`: fraction of exact zeros in the (dequantized) linear weights;
- `bits`: for float weights (fake-quantized or not), the fewest bits b such that, for some grouping
  of each row into runs of g consecutive inputs (g in 32, 64, 128, 256 or the whole row), no group
  holds more than 2**b distinct values, counted only where 2**b <= g/2 (else a float row of g distinct
  values would pass as log2(g) bits); no such grouping: the dtype's bits (16 or 32). For integer or
  packed weights (compressed-tensors `weight_packed`, torchao `_weight_qdata`), the stored bit width;
- `bytes`: bytes of those weight files on disk;
- `equal_to_source`: True when every tensor shared with `source_dir`'s weights is bit-identical
  (a "compressed" checkpoint that is its source), None without a source.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from compfair_tasks.errors import CompfairError

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
NOT_BLOCK_LINEAR = ("embed", "wte", "wpe", "lm_head", "norm", "ln_")
GROUP_CANDIDATES = (32, 64, 128, 256)
# a linear layer's weight as saved: float `weight`, compressed-tensors `weight_packed`, torchao `_weight_qdata`
LINEAR_KINDS = ("weight", "weight_packed", "_weight_qdata")


def weight_files(checkpoint_dir) -> list[Path]:
    """The model's weight files: top level of the folder only (not checkpoints/, not optimizer state)."""
    folder = Path(checkpoint_dir)
    return sorted({p for pattern in WEIGHT_PATTERNS for p in folder.glob(pattern) if p.is_file()})


def load_state(checkpoint_dir) -> dict[str, torch.Tensor]:
    state = {}
    for path in weight_files(checkpoint_dir):
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state.update(load_file(str(path)))
        else:
            state.update(torch.load(path, map_location="cpu", weights_only=True))
    return state


def _quantization_config(checkpoint_dir) -> dict:
    config_file = Path(checkpoint_dir) / "config.json"
    if not config_file.is_file():
        return {}
    return json.loads(config_file.read_text()).get("quantization_config") or {}


def _weights_setting(config: dict, key: str, fallback: str) -> int | None:
    """A compressed-tensors weights setting (num_bits, group_size) from its config_groups, else config[fallback]."""
    for group in (config.get("config_groups") or {}).values():
        weights = (group or {}).get("weights") or {}
        if weights.get(key):
            return int(weights[key])
    return config.get(fallback)


def _packed_bits(config: dict) -> int | None:
    """Bit width of compressed-tensors packed weights."""
    return _weights_setting(config, "num_bits", "bits")


def _group_size(config: dict) -> int | None:
    return _weights_setting(config, "group_size", "group_size")


def is_block_linear(name: str, tensor: torch.Tensor) -> bool:
    module = name.rpartition(".")[0]
    return tensor.ndim == 2 and not any(part in module for part in NOT_BLOCK_LINEAR)


def distinct_per_group(weight: torch.Tensor, group_size: int | None = None) -> int:
    """Most distinct values among `group_size` consecutive inputs of one output row (whole row if None)."""
    rows, cols = weight.shape
    size = group_size if group_size and cols % group_size == 0 else cols
    groups = weight.reshape(rows * (cols // size), size)
    ordered = groups.sort(dim=1).values
    return int(((ordered[:, 1:] != ordered[:, :-1]).sum(dim=1) + 1).max())


def float_bits(weight: torch.Tensor, group_size: int | None = None) -> int:
    """Bits of the value grid a float weight lies on (see module doc); its dtype's bits if none.
    Groupings are tried smallest first: the first that qualifies has the fewest distinct values."""
    cols = weight.shape[1]
    values = weight.float()
    for size in sorted({g for g in (group_size, *GROUP_CANDIDATES, cols) if g and cols % g == 0}):
        distinct = distinct_per_group(values, size)
        if distinct <= size // 2:
            return max(1, math.ceil(math.log2(distinct)))
    return torch.finfo(weight.dtype).bits


def _linear_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Linear weights of the blocks, by module name (see LINEAR_KINDS)."""
    found = {}
    for name, tensor in state.items():
        module, _, kind = name.rpartition(".")
        if kind in LINEAR_KINDS and is_block_linear(name, tensor):
            found[module] = tensor
    return found


def unpack(packed: torch.Tensor, shape, bits: int) -> torch.Tensor:
    """The signed integer weights of a compressed-tensors `pack-quantized` tensor (its own unpacker)."""
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    return unpack_from_int32(packed, bits, torch.Size([int(n) for n in shape]))


def measure_weights(checkpoint_dir, source_dir=None) -> dict:
    """Bits, sparsity, bytes and equality-to-source measured from the saved weights (see module doc)."""
    files = weight_files(checkpoint_dir)
    if not files:
        raise FileNotFoundError(f"{checkpoint_dir} holds no *.safetensors / pytorch_model*.bin weight files")
    state = load_state(checkpoint_dir)
    config = _quantization_config(checkpoint_dir)
    group_size = _group_size(config)
    linear = _linear_weights(state)
    zeros = total = 0
    bits = 0
    storage = set()
    for module, tensor in linear.items():
        if module + ".weight_packed" in state:
            bit_width = _packed_bits(config) or 4
            shape = state.get(module + ".weight_shape", torch.tensor([tensor.shape[0], tensor.shape[1] * 32 // bit_width]))
            values = unpack(tensor, shape.tolist(), bit_width)
            storage.add(f"packed int{bit_width} in {str(tensor.dtype).replace('torch.', '')}")
        elif not tensor.is_floating_point():
            bit_width, values = torch.iinfo(tensor.dtype).bits, tensor
            storage.add(str(tensor.dtype).replace("torch.", ""))
        else:
            bit_width, values = float_bits(tensor, group_size), tensor
            storage.add(str(tensor.dtype).replace("torch.", ""))
        zeros += int((values == 0).sum())
        total += values.numel()
        bits = max(bits, bit_width)
    equal = None
    if source_dir is not None and weight_files(source_dir):
        source = load_state(source_dir)
        shared = [k for k in state if k in source and state[k].shape == source[k].shape]
        equal = bool(shared) and set(linear) <= {k.rpartition(".")[0] for k in shared} and all(
            torch.equal(state[k], source[k]) for k in shared)
    return {
        "bits": bits if linear else None,
        "sparsity": zeros / total if total else None,
        "bytes": sum(p.stat().st_size for p in files),
        "storage": ", ".join(sorted(storage)),
        "linear_layers": len(linear),
        "group_size": group_size,
        "equal_to_source": equal,
    }


class NothingChangedError(CompfairError, ValueError):
    """A compressor run left the model as it was: a failure, never a saved "compressed" model."""


def refuse_unchanged(command: str, *, layers_changed: int | None = None, equal_to_source: bool | None = None,
                     steps: int | None = None, fix: str = "") -> None:
    """The one rule for every compressor: a run that changed nothing (0 layers changed, weights equal to the
    source's, 0 training steps) raises NothingChangedError; the caller keeps nothing. None = not measured."""
    reasons = [text for failed, text in ((layers_changed == 0, "0 layers changed"),
                                         (equal_to_source is True, "its weights equal the source's"),
                                         (steps == 0, "0 training steps")) if failed]
    if reasons:
        raise NothingChangedError(f"{command} changed nothing ({', '.join(reasons)}), so nothing was kept"
                                  + (f"; {fix}" if fix else ""))


def changed_tensors(model, reference) -> int:
    """How many of `model`'s parameters (by name) differ from `reference`'s: 0 means the run changed nothing."""
    before = dict(reference.named_parameters())
    return sum(1 for name, tensor in model.named_parameters()
               if name not in before or tensor.shape != before[name].shape or not torch.equal(tensor, before[name]))


def output_checks(model, tokenizer, reference, reference_tol: float, label: str, cache_tol: float | None = None) -> dict:
    """compressors.checks.check_compressed on the saved-and-reloaded model: cached vs uncached logits
    (within `cache_tol`, default the dtype's), and the logits within `reference_tol` (relative max
    difference) of the float source's."""
    from compressors.checks import check_compressed

    return check_compressed(model, tokenizer, reference=reference, reference_tol=reference_tol, label=label,
                            cache_tol=cache_tol)
