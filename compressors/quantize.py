"""`compfair compress quantize`: post-training int8 quantization of a causal LM's linear layers (CPU).

After Gonçalves & Strubell (2023), who applied PyTorch's dynamic quantization to the linear layers:

- `--mode dynamic` (default): weights int8, activations quantized to 8 bits on the fly per batch,
  int8 x int8 matrix products (PyTorch's dynamic quantized Linear, fbgemm/onednn kernels).
- `--mode weight-only`: weights int8, activations and arithmetic in float (torch's
  `_weight_int8pack_mm` kernel). Isolates the effect of rounding the weights.

Weights are rounded symmetrically per output channel (scale = max|w| / 127), or per tensor with
`--per-tensor` (torch.quantization.quantize_dynamic's default, as the paper used). GPT-2's Conv1D
projections are turned into equivalent nn.Linear first (else dynamic quantization skips them and
only the LM head would be quantized). Embeddings and norms stay float.

Checkpoint: the original `config.json`, the tokenizer, and `compfair_quantized.safetensors` holding
int8 weights with their scales plus the float tensors. transformers has no loader for it, so
evaluate it with compfair's lm_eval model type (registered by compfair's startup hook):

    lm_eval --model compfair-quantized --model_args pretrained=<dir> --tasks compfair_stereoset

or in Python: `load_quantized(dir)` returns the model, ready for `HFLM(pretrained=model, tokenizer=dir)`.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

WEIGHTS_FILE = "compfair_quantized.safetensors"
MODES = ("dynamic", "weight-only")


# --------------------------------------------------------------------------- int8 linear layers


def int8_weights(weight: torch.Tensor, per_tensor: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 rounding of a [out, in] weight: (int8 weight, float32 scale per output row)."""
    weight = weight.detach().float()
    peak = weight.abs().amax() if per_tensor else weight.abs().amax(dim=1)
    scale = (peak / 127).clamp(min=1e-12).expand(weight.shape[0]).contiguous()
    return torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous(), scale


class WeightOnlyInt8Linear(nn.Module):
    """y = x @ (int8 weight * scale).T + bias, without materialising the float weight."""

    def __init__(self, weight_int8: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.in_features, self.out_features = weight_int8.shape[1], weight_int8.shape[0]
        self.register_buffer("weight_int8", weight_int8)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        dtype = flat.dtype
        out = torch._weight_int8pack_mm(flat.float().contiguous(), self.weight_int8, self.scale).to(dtype)
        if self.bias is not None:
            out = out + self.bias
        return out.view(*x.shape[:-1], self.out_features)


def dynamic_int8_linear(weight_int8: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notices
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

        module = DynamicLinear(weight_int8.shape[1], weight_int8.shape[0], bias_=bias is not None, dtype=torch.qint8)
        qweight = torch._make_per_channel_quantized_tensor(
            weight_int8, scale.double(), torch.zeros_like(scale, dtype=torch.long), 0)
        module.set_weight_bias(qweight, None if bias is None else bias.float())
    return module


def build_int8_linear(mode: str, weight_int8, scale, bias) -> nn.Module:
    if mode == "dynamic":
        return dynamic_int8_linear(weight_int8, scale, bias)
    if mode == "weight-only":
        return WeightOnlyInt8Linear(weight_int8, scale, bias)
    raise ValueError(f"unknown quantization mode {mode!r}; choose from {', '.join(MODES)}")


# --------------------------------------------------------------------------- model surgery


def linear_layers(model, skip_lm_head: bool = False) -> dict[str, nn.Module]:
    """Name -> module of every nn.Linear or GPT-2 Conv1D (projections of attention and MLP, LM head)."""
    from transformers.pytorch_utils import Conv1D

    return {name: module for name, module in model.named_modules()
            if isinstance(module, (nn.Linear, Conv1D)) and not (skip_lm_head and name == "lm_head")}


def _weight_and_bias(module) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(module, nn.Linear):
        return module.weight, module.bias
    return module.weight.t(), module.bias  # Conv1D stores [in, out]


def _replace(model, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def quantize_model(model, mode: str = "dynamic", per_tensor: bool = False, skip_lm_head: bool = False):
    """Replace the linear layers of `model` (in place) by int8 ones; returns {name: (int8, scale, bias)}."""
    if mode not in MODES:
        raise ValueError(f"unknown quantization mode {mode!r}; choose from {', '.join(MODES)}")
    quantized = {}
    for name, module in linear_layers(model, skip_lm_head).items():
        weight, bias = _weight_and_bias(module)
        weight_int8, scale = int8_weights(weight, per_tensor)
        bias = None if bias is None else bias.detach().float().clone()
        quantized[name] = (weight_int8, scale, bias)
        _replace(model, name, build_int8_linear(mode, weight_int8, scale, bias))
    if "lm_head" in quantized:  # its int8 copy is no longer the embedding matrix: nothing may re-tie them
        model.config.tie_word_embeddings = False
        model.all_tied_weights_keys = {}
    return quantized


def save_quantized(model, quantized: dict, output_dir, mode: str, tokenizer=None) -> None:
    from safetensors.torch import save_file

    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, (weight_int8, scale, bias) in quantized.items():
        tensors[f"{name}.weight_int8"], tensors[f"{name}.scale"] = weight_int8.contiguous(), scale
        if bias is not None:
            tensors[f"{name}.bias"] = bias
    seen = set()
    for key, tensor in model.state_dict().items():
        if key.rpartition(".")[0] in quantized or not isinstance(tensor, torch.Tensor) or tensor.is_quantized:
            continue
        if tensor.data_ptr() in seen:  # tied weights (lm_head = embeddings) are re-tied on load
            continue
        seen.add(tensor.data_ptr())
        tensors[key] = tensor.detach().contiguous()
    metadata = {"format": "compfair-int8", "mode": mode, "quantized_modules": json.dumps(sorted(quantized))}
    save_file(tensors, str(output / WEIGHTS_FILE), metadata=metadata)
    model.config.save_pretrained(output)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(output)
    if tokenizer is not None:
        tokenizer.save_pretrained(output)


def load_quantized(checkpoint_dir, mode: str | None = None):
    """The quantized model saved in `checkpoint_dir` (eval mode, CPU)."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(checkpoint_dir) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {checkpoint_dir} is not a `compfair compress quantize` output")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    mode = mode or metadata["mode"]
    names = json.loads(metadata["quantized_modules"])
    int8 = {name: (tensors.pop(f"{name}.weight_int8"), tensors.pop(f"{name}.scale"), tensors.pop(f"{name}.bias", None))
            for name in names}
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(checkpoint_dir), dtype=torch.float32)
    missing, unexpected = model.load_state_dict(tensors, strict=False)  # the float tensors
    expected_missing = {f"{name}.{kind}" for name in names for kind in ("weight", "bias")}
    expected_missing |= set(getattr(model, "all_tied_weights_keys", None) or {})  # re-tied by from_config
    missing = [key for key in missing if key not in expected_missing]
    if missing or unexpected:
        raise ValueError(f"{path} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, (weight_int8, scale, bias) in int8.items():
        _replace(model, name, build_int8_linear(mode, weight_int8, scale, bias))
    if "lm_head" in int8:
        model.all_tied_weights_keys = {}
    return model.eval()


# --------------------------------------------------------------------------- lm_eval model type


@functools.cache
def _hflm_class():
    from lm_eval.models.huggingface import HFLM

    class QuantizedHFLM(HFLM):
        """lm_eval's HF model on a `compfair compress quantize` checkpoint (CPU)."""

        def __init__(self, pretrained: str, mode: str | None = None, **kwargs):
            kwargs.setdefault("tokenizer", pretrained)
            kwargs.pop("device", None)  # the int8 kernels are CPU kernels
            super().__init__(pretrained=load_quantized(pretrained, mode), backend="causal", device="cpu", **kwargs)

    return QuantizedHFLM


def __getattr__(name):  # `compressors.quantize:QuantizedHFLM` imports lm_eval only when lm_eval asks for it
    if name == "QuantizedHFLM":
        return _hflm_class()
    raise AttributeError(name)


# --------------------------------------------------------------------------- measurements and CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compfair compress quantize",
        description="Post-training int8 quantization of the linear layers (CPU); evaluate the output with "
                    "`lm_eval --model compfair-quantized --model_args pretrained=<output>`.")
    parser.add_argument("--model", required=True, help="checkpoint folder or hub id of a causal LM")
    parser.add_argument("--output", required=True)
    parser.add_argument("--mode", choices=MODES, default="dynamic",
                        help="dynamic: int8 weights and activations (the paper); weight-only: int8 weights")
    parser.add_argument("--per-tensor", action="store_true", help="one scale per weight matrix, not per row")
    parser.add_argument("--skip-lm-head", action="store_true", help="keep the LM head in float")
    parser.add_argument("--latency-tokens", type=int, default=128, help="sequence length of the latency check")
    parser.add_argument("--latency-batch", type=int, default=1, help="0 skips the latency check")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from compfair_tasks.measure import measure_latency
    from compressors.metadata import checkpoint_size_bytes, write_compression_metadata

    def forward_seconds(model):  # fp32 and int8 are timed on the same seeded token ids
        return measure_latency(model, seq_len=args.latency_tokens, batch_size=args.latency_batch, repeats=3,
                               warmup=1, seed=args.seed)["latency_ms"] / 1000

    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    float_params = sum(p.numel() for p in model.parameters())
    fp32_seconds = forward_seconds(model) if args.latency_batch else None
    quantized = quantize_model(model, args.mode, args.per_tensor, args.skip_lm_head)
    save_quantized(model, quantized, args.output, args.mode, tokenizer)
    int8_seconds = forward_seconds(model) if args.latency_batch else None
    int8_params = sum(w.numel() for w, _, _ in quantized.values())
    source_size = checkpoint_size_bytes(args.model) if Path(args.model).is_dir() else None
    record = write_compression_metadata(
        args.output, method=f"quantize_int8_{args.mode.replace('-', '_')}", source_model=args.model, seed=args.seed,
        settings={"mode": args.mode, "per_tensor": args.per_tensor, "skip_lm_head": args.skip_lm_head,
                  "evaluate_with": "lm_eval --model compfair-quantized --model_args pretrained=<dir>"},
        removed={"float_linear_layers": sorted(quantized)},
        extra={"params": float_params, "int8_params": int8_params, "source_size_bytes": source_size,
               "latency": None if fp32_seconds is None else {
                   "batch": args.latency_batch, "tokens": args.latency_tokens, "fp32_seconds": round(fp32_seconds, 4),
                   "int8_seconds": round(int8_seconds, 4), "speedup": round(fp32_seconds / int8_seconds, 3)}},
    )
    size_note = f"{source_size / 1e6:.1f} MB -> " if source_size else ""
    print(f"saved {args.output}: {len(quantized)} linear layers int8 ({args.mode}), "
          f"{size_note}{record['size_bytes'] / 1e6:.1f} MB on disk")
    if fp32_seconds is not None:
        print(f"forward {args.latency_batch}x{args.latency_tokens} tokens: fp32 {fp32_seconds * 1e3:.0f} ms, "
              f"int8 {int8_seconds * 1e3:.0f} ms, speedup x{fp32_seconds / int8_seconds:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
