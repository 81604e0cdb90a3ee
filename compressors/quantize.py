"""`compfair compress quantize`: post-training quantization of the linear layers of a causal LM or encoder.

`--method` picks the algorithm; all but `dynamic-int8` and `int8` write checkpoints that
`AutoModelForCausalLM.from_pretrained` (so `lm_eval --model hf --model_args pretrained=<dir>`, and vLLM) loads:

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
- `int8-per-token`: torchao Int8DynamicActivationInt8WeightConfig through TorchAoConfig: int8 weights
  (one scale per output row) and int8 activations with one scale per token, LM head included (a tied
  head is untied first). No activation scale is shared between tokens, so a document's scores do not
  depend on the other documents of its batch through the quantization (batched with padding = one by
  one, exactly, on short prompts); float kernels on other shapes still differ by ~1e-6 and can flip an
  int8 rounding (SmolLM2 BOLD-wiki word perplexity 489.9 at batch 1, 483.9 at batch 4; dynamic-int8
  5,323 and 10,008; fp32 466.5 both).
- `dynamic-int8` (default): Gonçalves & Strubell (2023) exactly: `torch.ao.quantization.quantize_dynamic(
  model, {nn.Linear}, dtype=torch.qint8)` on every nn.Linear, the LM head included (one symmetric scale
  per weight matrix, scale = max|w| / 127.5; activations quantized on the fly with one scale per
  tensor per call, fbgemm/x86 kernels). Causal LMs and encoders (BERT, RoBERTa, with or without MLM
  head). GPT-2's Conv1D projections are turned into equivalent nn.Linear first (else only the LM head
  would be quantized). One activation scale per call makes a token's output depend on everything else
  in the call: the other sequences of the batch, their padding, a cached vs a full forward. So scores
  depend on the evaluation batch: the `compfair-quantized` model type refuses `--batch_size auto` for it
  and the batch size lm_eval records is the one used (default 1: every document scored alone).
- `int8` (compfair's own, kept for its options): `--mode weight-only` rounds only the weights (per output
  row, or `--per-tensor`) and computes in float (torch's `_weight_int8pack_mm` kernel), isolating the
  effect of rounding the weights. `--method int8 --mode dynamic` is the old spelling of dynamic-int8.

Embeddings and norms stay float.

Checkpoint: the original `config.json`, the tokenizer, and `compfair_quantized.safetensors` holding
int8 weights with their scales plus the float tensors. transformers has no loader for it, so
evaluate it with compfair's lm_eval model type (registered by compfair's startup hook):

    lm_eval --model compfair-quantized --model_args pretrained=<dir> --batch_size 1 --tasks compfair_stereoset

or in Python: `load_quantized(dir)` returns the model (AutoModelForCausalLM's class for a causal LM;
AutoModelForMaskedLM's for an encoder with MLM head, AutoModel's for one without, as the source was
loaded), ready for `HFLM(pretrained=model, tokenizer=dir)` or the masked-LM model type.
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

from compfair_tasks import options
from compfair_tasks.errors import CompfairError

WEIGHTS_FILE = "compfair_quantized.safetensors"
MODES = ("dynamic", "weight-only")
# compressors/checks.py tolerances (max |difference| / max |logit|), measured on SmolLM2-135M:
# weight-only int8 vs float 0.059, its cache error float32-small (2.6e-6); dynamic int8 quantizes each
# call's activations with one scale per tensor, so a one-token cached step and a full forward round
# differently (dynamic-int8, per-matrix weight scales: 0.67, int8 vs float 0.80; per-row weight scales
# 0.61 and 0.65): for dynamic, only NaN or gross breakage fails the check
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
        scale = scale.double()
        values = weight_int8.float() * (scale if scale.numel() == 1 else scale[:, None]).float()
        if scale.numel() == 1:  # quantize_dynamic's own layout: one scale per matrix
            qweight = torch.quantize_per_tensor(values, float(scale), 0, torch.qint8)
        else:
            qweight = torch.quantize_per_channel(values, scale, torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8)
        if not torch.equal(qweight.int_repr(), weight_int8):  # q * s / s must round back to q
            raise ValueError("int8 weights did not survive re-quantization: a compfair bug")
        module.set_weight_bias(qweight, None if bias is None else bias.float())
    return module


def build_int8_linear(mode: str, weight_int8, scale, bias) -> nn.Module:
    if mode == "dynamic":
        return dynamic_int8_linear(weight_int8, scale, bias)
    if mode == "weight-only":
        return WeightOnlyInt8Linear(weight_int8, scale, bias)
    raise ValueError(f"unknown quantization mode {mode!r}; choose from {', '.join(MODES)}")


# --------------------------------------------------------------------------- model surgery


def output_head_name(model) -> str | None:
    """Module name of the model's output projection (lm_head, cls.predictions.decoder, ...), None without one."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return next((name for name, module in model.named_modules() if module is head), None) if head is not None else None


def conv1d_to_linear(model) -> None:
    """GPT-2's Conv1D projections (weight [in, out]) -> equivalent nn.Linear, in place."""
    from transformers.pytorch_utils import Conv1D

    for name, module in list(model.named_modules()):
        if isinstance(module, Conv1D):
            linear = nn.Linear(module.weight.shape[0], module.weight.shape[1], bias=module.bias is not None)
            with torch.no_grad():
                linear.weight.copy_(module.weight.t())
                if module.bias is not None:
                    linear.bias.copy_(module.bias)
            _replace(model, name, linear)


def untie_output_head(model) -> None:
    """Its int8 copy is no longer the embedding matrix: nothing may re-tie them (on save, load or from_config)."""
    model.config.tie_word_embeddings = False
    if hasattr(model.config, "get_text_config"):
        model.config.get_text_config().tie_word_embeddings = False
    model.all_tied_weights_keys = {}


def quantize_dynamic_int8(model, skip_lm_head: bool = False) -> dict[str, tuple]:
    """Gonçalves & Strubell's int8, in place: torch's quantize_dynamic on every nn.Linear (after Conv1D ->
    Linear), the output head too unless `skip_lm_head`. Returns {name: (int8 weight, scale [1], bias)}."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    head = output_head_name(model)
    conv1d_to_linear(model)
    spec = {nn.Linear: default_dynamic_qconfig}  # what quantize_dynamic(model, {nn.Linear}, dtype=qint8) expands to
    if skip_lm_head and head:
        spec[head] = None  # a module name overrides its type in quantize_dynamic's qconfig_spec
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True)
    quantized = {}
    for name, module in model.named_modules():
        if isinstance(module, DynamicLinear):
            weight = module.weight()
            if weight.qscheme() not in (torch.per_tensor_affine, torch.per_tensor_symmetric) or weight.q_zero_point():
                raise ValueError(f"{name}: quantize_dynamic gave an unexpected weight layout {weight.qscheme()}")
            bias = module.bias()
            quantized[name] = (weight.int_repr(), torch.tensor([weight.q_scale()], dtype=torch.float64),
                               None if bias is None else bias.detach().float().clone())
    if head in quantized:
        untie_output_head(model)
    return quantized


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
    if "lm_head" in quantized:
        untie_output_head(model)
    return quantized


def auto_class_name(model) -> str:
    """The transformers Auto class that rebuilds `model`'s architecture from its config."""
    from transformers.models.auto import modeling_auto as auto

    architecture = type(model).__name__
    for auto_name, mapping in (("AutoModelForCausalLM", auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES),
                               ("AutoModelForMaskedLM", auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES),
                               ("AutoModel", auto.MODEL_MAPPING_NAMES)):
        if architecture in set(mapping.values()):
            return auto_name
    raise QuantizeError(f"{architecture} is not a causal LM, masked LM or bare encoder transformers can rebuild; "
                        "quantize a GPT-2/Llama/GPT-NeoX-style causal LM or a BERT/RoBERTa-style encoder")


def source_auto_class(config) -> str:
    """How to load a source checkpoint: its causal or masked LM head if it has one, else the bare model."""
    from compfair_tasks.models import LM_HEAD_SUFFIXES

    architectures = list(getattr(config, "architectures", None) or [])
    if any(a.endswith("ForMaskedLM") for a in architectures):
        return "AutoModelForMaskedLM"
    if getattr(config, "is_encoder_decoder", False):
        raise QuantizeError("encoder-decoder models are not supported by the int8 methods; quantize a causal LM "
                            "or an encoder (BERT, RoBERTa)")
    if any(a.endswith(LM_HEAD_SUFFIXES) for a in architectures) or getattr(config, "is_decoder", False):
        return "AutoModelForCausalLM"
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return "AutoModel" if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES else "AutoModelForCausalLM"


def is_encoder(auto_class: str) -> bool:
    return auto_class != "AutoModelForCausalLM"


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
    metadata = {"format": "compfair-int8", "mode": mode, "quantized_modules": json.dumps(sorted(quantized)),
                "auto_class": auto_class_name(model)}
    save_file(tensors, str(output / WEIGHTS_FILE), metadata=metadata)
    model.config.save_pretrained(output)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(output)
    if tokenizer is not None:
        tokenizer.save_pretrained(output)


def load_quantized(checkpoint_dir, mode: str | None = None):
    """The quantized model saved in `checkpoint_dir` (eval mode, CPU)."""
    import transformers
    from safetensors import safe_open

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
    auto_class = getattr(transformers, metadata.get("auto_class", "AutoModelForCausalLM"))  # older files: causal
    model = auto_class.from_config(transformers.AutoConfig.from_pretrained(checkpoint_dir), dtype=torch.float32)
    missing, unexpected = model.load_state_dict(tensors, strict=False)  # the float tensors
    expected_missing = {f"{name}.{kind}" for name in names for kind in ("weight", "bias")}
    expected_missing |= set(getattr(model, "all_tied_weights_keys", None) or {})  # re-tied by from_config
    missing = [key for key in missing if key not in expected_missing]
    if missing or unexpected:
        raise ValueError(f"{path} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, (weight_int8, scale, bias) in int8.items():
        _replace(model, name, build_int8_linear(mode, weight_int8, scale, bias))
    if output_head_name(model) in int8 or "lm_head" in int8:
        untie_output_head(model)
    return model.eval()


# --------------------------------------------------------------------------- lm_eval model type


@functools.cache
def _hflm_class():
    from lm_eval.models.huggingface import HFLM

    class QuantizedHFLM(HFLM):
        """lm_eval's HF model on a `compfair compress quantize` checkpoint: compfair's int8 (CPU), or any
        other method's output, which transformers loads as `--model hf` would."""

        def __init__(self, pretrained: str, mode: str | None = None, batch_size=1, **kwargs):
            if saved_mode(pretrained) is None:  # int8-per-token, gptq, torchao-int8: transformers loads them
                super().__init__(pretrained=pretrained, batch_size=batch_size, **kwargs)
                return
            kwargs.setdefault("tokenizer", pretrained)
            kwargs.pop("device", None)  # the int8 kernels are CPU kernels
            check_eval_batch_size(pretrained, batch_size, mode)
            model = load_quantized(pretrained, mode)
            if is_encoder(auto_class_name(model)):
                raise QuantizeError(f"{pretrained} is an int8 encoder ({type(model).__name__}): evaluate it with "
                                    f"`lm_eval --model compfair-mlm --model_args pretrained={pretrained}`")
            super().__init__(pretrained=model, backend="causal", device="cpu", batch_size=batch_size, **kwargs)

    return QuantizedHFLM


def saved_mode(checkpoint_dir) -> str | None:
    """The int8 mode written in a compfair int8 checkpoint (dynamic, weight-only), None if it holds none."""
    from safetensors import safe_open

    path = Path(checkpoint_dir) / WEIGHTS_FILE
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata().get("mode")


def check_eval_batch_size(checkpoint_dir, batch_size, mode: str | None = None) -> None:
    """Dynamic int8 scores depend on the batch (one activation scale per call): refuse a batch size that
    varies with the machine (`auto`), so the batch size lm_eval records is the one every call used."""
    if (mode or saved_mode(checkpoint_dir)) == "dynamic" and str(batch_size).strip().lower().startswith("auto"):
        raise QuantizeError(
            f"--batch_size {batch_size}: {checkpoint_dir} is dynamic int8, whose scores depend on the batch a "
            "document is scored in (one activation scale per call); give a fixed --batch_size N (1, the default, "
            "scores every document alone) and compare runs only at the same N")


def __getattr__(name):  # `compressors.quantize:QuantizedHFLM` imports lm_eval only when lm_eval asks for it
    if name == "QuantizedHFLM":
        return _hflm_class()
    raise AttributeError(name)


# --------------------------------------------------------------------------- measurements and CLI


LLMCOMPRESSOR_METHODS = ("gptq", "awq", "rtn")
TORCHAO_METHODS = ("torchao-int8", "torchao-int4", "int8-per-token")
METHODS = ("dynamic-int8", "int8-per-token", "int8", *LLMCOMPRESSOR_METHODS, "torchao-int8", "torchao-int4")
CALIBRATED = ("gptq", "awq")
# largest relative logit change vs the float source a working quantization may cause (a sanity bound
# against broken outputs, not a quality target); measured on SmolLM2: GPTQ 4-bit 0.48, torchao int8 0.057
LIBRARY_REFERENCE_TOL = {4: 1.0, 8: 0.15, "int8-per-token": 0.5}
# int8-per-token: a token's activations get their own scale and its integer matmul is exact, so on the
# short check prompts batched (right-padded) = alone: measured 0.0 on SmolLM2 and a tiny Llama (dynamic-int8
# 0.89, fp32 3.6e-6). Float kernels on other shapes (a KV-cached step, longer padded batches) still differ
# by ~1e-6, which flips roundings of int8 activations that the layers amplify: cached vs uncached 0.11 on
# SmolLM2 (6.5e-3 tiny Llama; dynamic-int8 0.67, fp32 1.8e-6); int8-per-token vs fp32 0.22 (dynamic-int8
# 0.80). BATCH_TOL only tells per-token scales from per-tensor ones (a torchao change would show here)
BATCH_TOL = 0.3
LIBRARY_CACHE_TOL = {"int8-per-token": 0.5}
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
    parser.add_argument("--method", choices=METHODS, default="dynamic-int8",
                        help="dynamic-int8: torch quantize_dynamic on every nn.Linear (Gonçalves & Strubell); "
                             "int8-per-token: torchao int8 weights + per-token int8 activations (batch-independent); "
                             "int8: compfair's own (--mode weight-only); gptq/awq/rtn: llm-compressor; "
                             "torchao-*: torchao weight-only")
    parser.add_argument("--bits", type=int, choices=(4, 8), default=4, help="weight bits of gptq/awq/rtn")
    parser.add_argument("--group-size", type=options.positive_int, default=64,
                        help="inputs sharing one scale (gptq/awq/rtn); must divide every layer's input width "
                             "(SmolLM2's 576: 32, 64, 192 or 576; not 128)")
    add_calibration_arguments(parser, "gptq/awq")
    parser.add_argument("--mode", choices=MODES, default="dynamic",
                        help="int8 method: weight-only; dynamic = the old spelling of --method dynamic-int8")
    parser.add_argument("--per-tensor", action="store_true", help="int8 method: one scale per matrix, not per row")
    parser.add_argument("--skip-lm-head", action="store_true", help="dynamic-int8/int8: keep the LM head in "
                        "float (gptq/rtn/torchao-int8 always do; the paper did not)")
    parser.add_argument("--latency-tokens", type=options.int_range(1, MAX_LATENCY_TOKENS), default=128,
                        help="sequence length of the latency check (at most the model's context length)")
    parser.add_argument("--latency-batch", type=options.int_range(0, MAX_LATENCY_TOKENS), default=1,
                        help="sequences in the latency check; 0 skips it")
    parser.add_argument("--seed", type=options.seed, default=0, help="seed of the latency check's token ids")
    return parser


COMPFAIR_INT8 = ("dynamic-int8", "int8")  # the methods of _int8_main
MAX_LATENCY_TOKENS = 1 << 16  # tokens x batch of the latency check: a sanity bound on its memory
# options that only some methods use: given with another method they would be ignored without a word
METHOD_OPTIONS = {"--bits": ("gptq", "awq", "rtn"), "--group-size": ("gptq", "awq", "rtn"),
                  "--num-examples": CALIBRATED, "--data": CALIBRATED, "--block-size": CALIBRATED,
                  "--mode": ("int8",), "--per-tensor": ("int8",), "--skip-lm-head": COMPFAIR_INT8,
                  "--latency-tokens": COMPFAIR_INT8, "--latency-batch": COMPFAIR_INT8}


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """Parse and cross-check the options (exit 2 on a bad value or combination, before any model loads)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    given = {word.split("=")[0] for word in (sys.argv[1:] if argv is None else argv) if word.startswith("--")}
    for option, methods in METHOD_OPTIONS.items():
        if option in given and args.method not in methods:
            parser.error(f"{option} is for --method {'/'.join(methods)}, not {args.method}: drop it or change --method")
    if args.latency_tokens * args.latency_batch > MAX_LATENCY_TOKENS:
        parser.error(f"the latency check of {args.latency_batch} x {args.latency_tokens} tokens is past "
                     f"{MAX_LATENCY_TOKENS} tokens: give a smaller --latency-batch or --latency-tokens")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    from compfair_tasks.models import load_model_config, resolve_model
    from compressors.output import prepare_output

    if args.method in NEEDS_GPU and not torch.cuda.is_available():  # before loading anything
        raise QuantizeError(f"--method {args.method} needs a GPU: {NEEDS_GPU[args.method]}")
    args.source = resolve_model(args.model)  # bad input raises a CompfairError: the CLI prints it and exits 2
    config = load_model_config(args.model)
    from compressors.text_data import check_context

    if args.method in CALIBRATED:
        check_context(args.block_size, config)
    if args.method in COMPFAIR_INT8 and args.latency_batch:
        check_context(args.latency_tokens, config, "--latency-tokens")
    prepare_output(args.output, sources=[args.model, args.source], overwrite=args.overwrite)
    if args.method == "int8" and args.mode == "dynamic":  # the old spelling of the paper's method
        args.method = "dynamic-int8"
    return _int8_main(args) if args.method in COMPFAIR_INT8 else _library_main(args)


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
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    if method == "torchao-int8":
        return TorchAoConfig(Int8WeightOnlyConfig())
    if method == "int8-per-token":  # every linear layer, the (untied) LM head too, as dynamic-int8 does
        return TorchAoConfig(Int8DynamicActivationInt8WeightConfig(), include_input_output_embeddings=True,
                             modules_to_not_convert=[])
    raise QuantizeError(NEEDS_GPU.get(method, f"unknown torchao method {method!r}"))


def load_torchao(source, method: str, float_model):
    """`source` quantized by torchao at load time (TorchAoConfig). int8-per-token quantizes the LM head too:
    a head tied to the embeddings is untied first (through a float copy), since torchao skips tied weights."""
    import copy
    import tempfile

    from transformers import AutoModelForCausalLM

    head, embeddings = float_model.get_output_embeddings(), float_model.get_input_embeddings()
    with tempfile.TemporaryDirectory(prefix="compfair-untied-") as untied:
        if method == "int8-per-token" and head is not None and head.weight is embeddings.weight:
            copied = copy.deepcopy(float_model)
            copied.get_output_embeddings().weight = nn.Parameter(head.weight.detach().clone())
            untie_output_head(copied)
            copied.save_pretrained(untied)
            source = untied
        return AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, device_map="cpu",
                                                    quantization_config=torchao_config(method)).eval()


def model_outputs(model, input_ids, attention_mask=None) -> torch.Tensor:
    """Logits of an LM (causal or masked), the last hidden state of a bare encoder."""
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask)
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def batched_vs_alone(model, tokenizer=None) -> float:
    """Max relative difference of the check prompts' outputs scored in one right-padded batch (as lm_eval's
    log-likelihood batches) from each scored alone: 0 for a batch-independent model."""
    from compressors.checks import prompt_ids, relative_difference

    ids = prompt_ids(model, tokenizer)
    lengths = [i.shape[1] for i in ids]
    batch = torch.zeros(len(ids), max(lengths), dtype=torch.long)
    mask = torch.zeros_like(batch)
    for row, (prompt, length) in enumerate(zip(ids, lengths, strict=True)):
        batch[row, :length], mask[row, :length] = prompt[0], 1
    together = model_outputs(model, batch, mask)
    return max(relative_difference(together[row, :length], model_outputs(model, prompt)[0])
               for row, (prompt, length) in enumerate(zip(ids, lengths, strict=True)))


def _library_main(args) -> int:
    import time

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from compressors.metadata import write_compression_metadata
    from compressors.output import staged_output
    from compressors.text_data import calibration_blocks
    from compressors.verify import measure_weights, output_checks, refuse_unchanged

    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.source)
    blocks = calibration_blocks(args, tokenizer) if args.method in CALIBRATED else None  # bad --data: before the model
    reference = AutoModelForCausalLM.from_pretrained(args.source, dtype=torch.float32).eval()
    if not any(isinstance(m, nn.Linear) for name, m in reference.named_modules() if not name.endswith("lm_head")):
        raise QuantizeError(f"--method {args.method} quantizes nn.Linear layers only, and {args.model} has none in "
                            "its blocks (GPT-2 keeps them in transformers' Conv1D): use --method dynamic-int8")
    output = Path(args.output)
    started = time.perf_counter()
    if args.method in TORCHAO_METHODS:
        model = load_torchao(args.source, args.method, reference)
        settings = {"method": args.method}
    else:
        import copy

        model = copy.deepcopy(reference)
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
        bits = 8 if args.method in TORCHAO_METHODS else args.bits
        checks = output_checks(loaded, tokenizer, reference, LIBRARY_REFERENCE_TOL.get(args.method, LIBRARY_REFERENCE_TOL[bits]),
                               f"{args.method} vs float source", cache_tol=LIBRARY_CACHE_TOL.get(args.method))
        checks["batched_vs_alone"] = batched_vs_alone(loaded, tokenizer)
        if args.method == "int8-per-token" and not checks["batched_vs_alone"] <= BATCH_TOL:
            raise QuantizeError(f"int8-per-token: batched outputs differ from one-by-one outputs by "
                                f"{checks['batched_vs_alone']:.1e} > {BATCH_TOL:.0e}: a compfair bug, please report it")
        measured = measure_weights(staged, args.source if Path(args.source).is_dir() else None)
        refuse_unchanged("compfair compress quantize", equal_to_source=measured["equal_to_source"],
                         fix=f"no linear layer of {args.model} was quantized")
        write_compression_metadata(
            staged, method=f"quantize_{args.method.replace('-', '_')}", source_model=args.model, seed=args.seed,
            settings={**settings, "evaluate_with": "lm_eval --model hf --model_args pretrained=<dir>"},
            extra={"measured": measured, "seconds": round(seconds, 1), "checks": checks,
                   "params": sum(p.numel() for p in reference.parameters())})
    print(f"saved {output}: {args.method} in {seconds:.0f} s; measured {measured['bits']} bits "
          f"({measured['storage']}), {measured['bytes'] / 1e6:.1f} MB on disk; batched vs one-by-one outputs "
          f"differ by {checks['batched_vs_alone']:.1e} of their scale")
    return 0


# --------------------------------------------------------------------------- compfair int8


def _int8_main(args) -> int:
    """dynamic-int8 (torch's quantize_dynamic) and compfair's weight-only int8: a compfair int8 checkpoint."""
    import transformers

    from compfair_tasks.measure import measure_latency
    from compressors.checks import check_compressed, frozen_reference, prompt_ids, relative_difference
    from compressors.metadata import checkpoint_size_bytes, write_compression_metadata
    from compressors.output import staged_output
    from compressors.verify import refuse_unchanged

    def forward_seconds(model):  # fp32 and int8 are timed on the same seeded token ids
        return measure_latency(model, seq_len=args.latency_tokens, batch_size=args.latency_batch, repeats=3,
                               warmup=1, seed=args.seed)["latency_ms"] / 1000

    source, paper = args.source, args.method == "dynamic-int8"
    mode = "dynamic" if paper else args.mode
    torch.manual_seed(args.seed)
    auto_class = source_auto_class(transformers.AutoConfig.from_pretrained(source))
    if is_encoder(auto_class) and not paper:
        raise QuantizeError(f"--method int8 --mode {args.mode} is for causal LMs; quantize an encoder with "
                            "--method dynamic-int8")
    model = getattr(transformers, auto_class).from_pretrained(source, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    float_params = sum(p.numel() for p in model.parameters())
    fp32_seconds = forward_seconds(model) if args.latency_batch else None
    ids = prompt_ids(model, tokenizer)
    if is_encoder(auto_class):
        float_outputs = [model_outputs(model, i) for i in ids]
    else:
        float_logits = frozen_reference(model, tokenizer)
    quantized = (quantize_dynamic_int8(model, args.skip_lm_head) if paper
                 else quantize_model(model, mode, args.per_tensor, args.skip_lm_head))
    refuse_unchanged("compfair compress quantize", layers_changed=len(quantized),
                     fix=f"{args.model} has no nn.Linear layer that int8 can quantize")
    if is_encoder(auto_class):  # no generation to check: outputs near the float model's, no NaN
        difference = max(relative_difference(model_outputs(model, i), f) for i, f in zip(ids, float_outputs,
                                                                                          strict=True))
        if not difference <= REFERENCE_TOL[mode]:
            raise QuantizeError(f"int8 vs float: outputs differ by {difference:.2e} > {REFERENCE_TOL[mode]:.0e}: "
                                "nothing written (a compfair bug: please report it with the command)")
        checks = {"reference_diff": difference, "reference_tol": REFERENCE_TOL[mode]}
        print(f"check on {len(ids)} prompts: int8 vs float {difference:.1e} (tol {REFERENCE_TOL[mode]:.0e}): ok")
    else:
        checks = check_compressed(model, tokenizer, reference=float_logits, reference_tol=REFERENCE_TOL[mode],
                                  cache_tol=CACHE_TOL[mode], label="int8 vs float")
    checks["batched_vs_alone"] = batched_vs_alone(model, tokenizer)
    int8_seconds = forward_seconds(model) if args.latency_batch else None
    int8_params = sum(w.numel() for w, _, _ in quantized.values())
    source_size = checkpoint_size_bytes(source) if Path(source).is_dir() else None
    evaluate_with = ("lm_eval --model compfair-mlm --model_args pretrained=<dir>" if is_encoder(auto_class)
                     else "lm_eval --model compfair-quantized --model_args pretrained=<dir>")
    if paper:
        settings = {"call": "quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)",
                    "weights": "int8 per matrix", "activations": "int8 per tensor per call",
                    "engine": torch.backends.quantized.engine, "skip_lm_head": args.skip_lm_head,
                    "batch_dependent": True, "evaluate_with": evaluate_with + " --batch_size 1"}
    else:
        settings = {"mode": mode, "per_tensor": args.per_tensor, "skip_lm_head": args.skip_lm_head,
                    "batch_dependent": mode == "dynamic", "evaluate_with": evaluate_with}
    with staged_output(args.output, overwrite=args.overwrite, writer="compfair compress quantize") as staged:
        save_quantized(model, quantized, staged, mode, tokenizer)
        record = write_compression_metadata(
            staged, method="quantize_dynamic_int8" if paper else f"quantize_int8_{mode.replace('-', '_')}",
            source_model=args.model, seed=args.seed, settings=settings,
            removed={"float_linear_layers": sorted(quantized)},
            extra={"params": float_params, "int8_params": int8_params, "source_size_bytes": source_size,
                   "model_class": auto_class, "checks": checks,
                   "batch_dependence": None if mode != "dynamic" else (
                       "scores depend on the evaluation batch (its other sequences and their padding): evaluate with a "
                       "fixed --batch_size (lm_eval records it; compfair-quantized refuses auto) and compare runs "
                       "only at the same batch size; checks.batched_vs_alone measures the effect"),
                   "latency": None if fp32_seconds is None else {
                       "batch": args.latency_batch, "tokens": args.latency_tokens, "fp32_seconds": round(fp32_seconds, 4),
                       "int8_seconds": round(int8_seconds, 4), "speedup": round(fp32_seconds / int8_seconds, 3)}},
        )
    size_note = f"{source_size / 1e6:.1f} MB -> " if source_size else ""
    print(f"saved {args.output}: {len(quantized)} linear layers int8 ({args.method}{'' if paper else ' ' + mode}), "
          f"{size_note}{record['size_bytes'] / 1e6:.1f} MB on disk; batched vs one-by-one outputs differ by "
          f"{checks['batched_vs_alone']:.1e} of their scale")
    if fp32_seconds is not None:
        print(f"forward {args.latency_batch}x{args.latency_tokens} tokens: fp32 {fp32_seconds * 1e3:.0f} ms, "
              f"int8 {int8_seconds * 1e3:.0f} ms, speedup x{fp32_seconds / int8_seconds:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
