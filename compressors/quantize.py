"""`compfair compress quantize`: post-training quantization of a causal LM's linear layers.

`--method` picks the algorithm; all but `int8` write checkpoints that `AutoModelForCausalLM.from_pretrained`
(so `lm_eval --model hf --model_args pretrained=<dir>`, and vLLM) loads:

- `gptq`, `awq`, `rtn` (`--bits 4|8`, `--group-size`): llm-compressor's GPTQModifier / AWQModifier /
  QuantizationModifier, symmetric int weights per group of input channels, activations in float
  (W4A16 / W8A16). Saved in the compressed-tensors `pack-quantized` format (int32-packed weights +
  scales); transformers loads it through the `compressed-tensors` package. gptq/awq calibrate on
  `--data` (any source `compressors.text_data.load_texts` accepts; default the shipped BOLD Wikipedia).
  Measured here (SmolLM2-135M, 2 busy CPU cores): rtn 1-2 s, gptq 6-8 min on 16-32 blocks of 256 tokens.
  AWQ needs a GPU: llm-compressor's AWQ pins memory (`pin_memory`), a RuntimeError without an accelerator.
  llm-compressor 0.14 pins transformers<=5.17; it runs with our transformers 5.23 (tests and the
  SmolLM2 runs above), so it is installed with --no-deps (requirements-offline.txt).
- `torchao-int8`: torchao Int8WeightOnlyConfig through transformers' TorchAoConfig (per-channel int8
  weights, CPU kernels). `torchao-int4` needs a GPU: torchao 0.18 has no CPU int4 layout (measured:
  plain/preshuffled need the CUDA `mslk` kernels, plain_int32 "does not support device 'cpu'",
  tile_packed_to_4d needs CUDA), so it refuses on CPU before loading the model.
- `int8` (default, compfair's own, below): kept because its `--mode dynamic` quantizes activations too,
  the setting of Gonçalves & Strubell (2023), which no library checkpoint here reproduces on CPU.

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

from compfair_tasks.errors import CompfairError

WEIGHTS_FILE = "compfair_quantized.safetensors"
MODES = ("dynamic", "weight-only")
# compressors/checks.py tolerances (max |difference| / max |logit|), measured on SmolLM2-135M:
# weight-only int8 vs float 0.059, its cache error float32-small (2.6e-6); dynamic int8 quantizes each
# call's activations with one scale per tensor, so a one-token cached step and a full forward round
# differently (measured 0.61; int8 vs float 0.65): for dynamic, only NaN or gross breakage fails the check
REFERENCE_TOL = {"weight-only": 0.2, "dynamic": 1.0}
CACHE_TOL = {"weight-only": 1e-4, "dynamic": 1.0}


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
        raise QuantizeError(f"{checkpoint_dir} holds no {WEIGHTS_FILE}, so it is not a `compfair compress quantize "
                            f"--method int8` output: evaluate any other checkpoint (float, gptq, rtn, torchao) "
                            f"with `lm_eval --model hf --model_args pretrained={checkpoint_dir}`")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open is no dict)
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


LLMCOMPRESSOR_METHODS = ("gptq", "awq", "rtn")
TORCHAO_METHODS = ("torchao-int8", "torchao-int4")
METHODS = ("int8", *LLMCOMPRESSOR_METHODS, *TORCHAO_METHODS)
CALIBRATED = ("gptq", "awq")
# largest relative logit change vs the float source a working quantization may cause (a sanity bound
# against broken outputs, not a quality target); measured on SmolLM2: GPTQ 4-bit 0.48, torchao int8 0.057
LIBRARY_REFERENCE_TOL = {4: 1.0, 8: 0.15}
NEEDS_GPU = {  # measured on CPU with the locked torch 2.13 (see the module doc)
    "torchao-int4": "torchao 0.18 has no CPU int4 weight layout (its int4 kernels are CUDA-only); "
                    "run it on a CUDA machine, or use --method gptq/rtn --bits 4 on CPU",
    "awq": "llm-compressor 0.14's AWQ pins its activation cache in page-locked memory, which needs an accelerator "
           "(RuntimeError on CPU); run it on a CUDA machine, or use --method gptq on CPU",
}


class QuantizeError(CompfairError, ValueError):
    """Bad settings, reported by the CLI in one line."""


def build_parser() -> argparse.ArgumentParser:
    from compressors.output import add_model_and_output_arguments
    from compressors.text_data import add_calibration_arguments

    parser = argparse.ArgumentParser(
        prog="compfair compress quantize",
        description="Post-training quantization of the linear layers. gptq/awq/rtn/torchao-* outputs load with "
                    "`lm_eval --model hf --model_args pretrained=<output>`; the default int8 method needs "
                    "`lm_eval --model compfair-quantized --model_args pretrained=<output>`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_and_output_arguments(parser, "quantized")
    parser.add_argument("--method", choices=METHODS, default="int8",
                        help="int8: compfair's int8 (--mode); gptq/awq/rtn: llm-compressor; torchao-*: torchao")
    parser.add_argument("--bits", type=int, choices=(4, 8), default=4, help="weight bits of gptq/awq/rtn")
    parser.add_argument("--group-size", type=int, default=64,
                        help="inputs sharing one scale (gptq/awq/rtn); must divide every layer's input width "
                             "(SmolLM2's 576: 32, 64, 192 or 576; not 128)")
    add_calibration_arguments(parser, "gptq/awq")
    parser.add_argument("--mode", choices=MODES, default="dynamic",
                        help="int8 method: dynamic = int8 weights and activations (the paper); weight-only")
    parser.add_argument("--per-tensor", action="store_true", help="int8 method: one scale per matrix, not per row")
    parser.add_argument("--skip-lm-head", action="store_true", help="int8 method: keep the LM head in float "
                        "(the library methods always do)")
    parser.add_argument("--latency-tokens", type=int, default=128, help="sequence length of the latency check")
    parser.add_argument("--latency-batch", type=int, default=1, help="0 skips the latency check")
    parser.add_argument("--seed", type=int, default=0, help="seed of the latency check's token ids")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from compfair_tasks.models import load_model_config, resolve_model
    from compressors.output import prepare_output

    if args.method in NEEDS_GPU and not torch.cuda.is_available():  # before loading anything
        raise QuantizeError(f"--method {args.method} needs a GPU: {NEEDS_GPU[args.method]}")
    args.source = resolve_model(args.model)  # bad input raises a CompfairError: the CLI prints it and exits 2
    load_model_config(args.model)
    prepare_output(args.output, sources=[args.model, args.source], overwrite=args.overwrite)
    return _int8_main(args) if args.method == "int8" else _library_main(args)


# --------------------------------------------------------------------------- library methods


def check_group_size(model, group_size: int) -> None:
    widths = sorted({m.in_features for name, m in model.named_modules()
                     if isinstance(m, nn.Linear) and not name.endswith("lm_head")})
    bad = [w for w in widths if w % group_size]
    if bad:
        fits = [g for g in (32, 64, 128, 256) if all(w % g == 0 for w in widths)]
        raise QuantizeError(f"--group-size {group_size} does not divide the layer input widths {bad}; "
                            f"use one of {fits or widths}")


def llmcompressor_modifier(method: str, bits: int, group_size: int):
    """The llm-compressor modifier: symmetric int `bits` weights per group, float activations, LM head kept."""
    from llmcompressor.modifiers.awq import AWQModifier
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    weights = {"num_bits": bits, "type": "int", "symmetric": True, "strategy": "group", "group_size": group_size}
    modifier = {"gptq": GPTQModifier, "awq": AWQModifier, "rtn": QuantizationModifier}[method]
    return modifier(config_groups={"group_0": {"targets": ["Linear"], "weights": weights}}, ignore=["lm_head"])


def quantize_with_llmcompressor(model, method: str, bits: int, group_size: int, blocks=None) -> None:
    """Quantize `model` in place (llm-compressor oneshot); save it afterwards with save_pretrained."""
    from llmcompressor import oneshot

    check_group_size(model, group_size)
    kwargs = {}
    if blocks is not None:
        from datasets import Dataset

        kwargs = {"dataset": Dataset.from_dict({"input_ids": blocks.tolist(),
                                                "attention_mask": torch.ones_like(blocks).tolist()}),
                  "max_seq_length": blocks.shape[1], "num_calibration_samples": len(blocks)}
    oneshot(model=model, recipe=llmcompressor_modifier(method, bits, group_size), **kwargs)


def torchao_config(method: str):
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    if method == "torchao-int8":
        return TorchAoConfig(Int8WeightOnlyConfig())
    raise QuantizeError(NEEDS_GPU.get(method, f"unknown torchao method {method!r}"))


def _library_main(args) -> int:
    import time

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from compressors.metadata import write_compression_metadata
    from compressors.output import staged_output
    from compressors.text_data import calibration_blocks
    from compressors.verify import measure_weights, output_checks

    if args.method in TORCHAO_METHODS and args.bits != 4:
        raise QuantizeError("--bits is for gptq/awq/rtn; torchao-int8/int4 fix their own bit width")
    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.source)
    reference = AutoModelForCausalLM.from_pretrained(args.source, dtype=torch.float32).eval()
    output = Path(args.output)
    started = time.perf_counter()
    blocks = None
    if args.method in TORCHAO_METHODS:
        model = AutoModelForCausalLM.from_pretrained(args.source, dtype=torch.float32, device_map="cpu",
                                                     quantization_config=torchao_config(args.method))
        settings = {"method": args.method}
    else:
        import copy

        model = copy.deepcopy(reference)
        if args.method in CALIBRATED:
            blocks = calibration_blocks(args, tokenizer)
        quantize_with_llmcompressor(model, args.method, args.bits, args.group_size, blocks)
        settings = {"method": args.method, "bits": args.bits, "group_size": args.group_size, "symmetric": True,
                    "activations": "float", "data": args.data or ("bold_wiki" if blocks is not None else None),
                    "calibration_blocks": None if blocks is None else list(blocks.shape)}
    seconds = time.perf_counter() - started
    with staged_output(output, overwrite=args.overwrite, writer="compfair compress quantize") as staged:
        model.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
        del model
        loaded = AutoModelForCausalLM.from_pretrained(staged).eval()  # what lm_eval --model hf will evaluate
        bits = 8 if args.method == "torchao-int8" else args.bits
        checks = output_checks(loaded, tokenizer, reference, LIBRARY_REFERENCE_TOL[bits],
                               f"{args.method} vs float source")
        measured = measure_weights(staged, args.source if Path(args.source).is_dir() else None)
        if measured["equal_to_source"]:
            raise QuantizeError(f"{output} holds its source's weights unchanged: nothing was quantized")
        write_compression_metadata(
            staged, method=f"quantize_{args.method.replace('-', '_')}", source_model=args.model, seed=args.seed,
            settings={**settings, "evaluate_with": "lm_eval --model hf --model_args pretrained=<dir>"},
            extra={"measured": measured, "seconds": round(seconds, 1), "checks": checks,
                   "params": sum(p.numel() for p in reference.parameters())})
    print(f"saved {output}: {args.method} in {seconds:.0f} s; measured {measured['bits']} bits "
          f"({measured['storage']}), {measured['bytes'] / 1e6:.1f} MB on disk")
    return 0


# --------------------------------------------------------------------------- compfair int8


def _int8_main(args) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from compfair_tasks.measure import measure_latency
    from compressors.checks import check_compressed, frozen_reference
    from compressors.metadata import checkpoint_size_bytes, write_compression_metadata
    from compressors.output import staged_output

    def forward_seconds(model):  # fp32 and int8 are timed on the same seeded token ids
        return measure_latency(model, seq_len=args.latency_tokens, batch_size=args.latency_batch, repeats=3,
                               warmup=1, seed=args.seed)["latency_ms"] / 1000

    source = args.source
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    float_params = sum(p.numel() for p in model.parameters())
    fp32_seconds = forward_seconds(model) if args.latency_batch else None
    float_logits = frozen_reference(model, tokenizer)
    quantized = quantize_model(model, args.mode, args.per_tensor, args.skip_lm_head)
    check_compressed(model, tokenizer, reference=float_logits, reference_tol=REFERENCE_TOL[args.mode],
                     cache_tol=CACHE_TOL[args.mode], label="int8 vs float")
    int8_seconds = forward_seconds(model) if args.latency_batch else None
    int8_params = sum(w.numel() for w, _, _ in quantized.values())
    source_size = checkpoint_size_bytes(source) if Path(source).is_dir() else None
    with staged_output(args.output, overwrite=args.overwrite, writer="compfair compress quantize") as staged:
        save_quantized(model, quantized, staged, args.mode, tokenizer)
        record = write_compression_metadata(
            staged, method=f"quantize_int8_{args.mode.replace('-', '_')}", source_model=args.model, seed=args.seed,
            settings={"mode": args.mode, "per_tensor": args.per_tensor, "skip_lm_head": args.skip_lm_head,
                      "evaluate_with": "lm_eval --model compfair-quantized --model_args pretrained=<dir>"},
            removed={"float_linear_layers": sorted(quantized)},
            extra={"params": float_params, "int8_params": int8_params, "source_size_bytes": source_size,
                   "latency": None if fp32_seconds is None else {
                       "batch": args.latency_batch, "tokens": args.latency_tokens,
                       "fp32_seconds": round(fp32_seconds, 4), "int8_seconds": round(int8_seconds, 4),
                       "speedup": round(fp32_seconds / int8_seconds, 3)}},
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
