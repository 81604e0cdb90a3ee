"""int8 quantization: rounding arithmetic, logits close to fp32, save/load identical, lm_eval run."""

from __future__ import annotations

import json

import pytest
import torch

from compressors import quantize
from tests.test_prune import tiny_gpt2, tiny_llama, tokens


def test_int8_rounding_by_hand():
    weight = torch.tensor([[1.27, -0.5, 0.0], [0.2, 0.1, -0.4]])
    q, scale = quantize.int8_weights(weight)
    torch.testing.assert_close(scale, torch.tensor([0.01, 0.4 / 127]))
    assert q.dtype == torch.int8 and q.tolist() == [[127, -50, 0], [64, 32, -127]]  # 63.5 -> 64 (half to even)
    q, scale = quantize.int8_weights(weight, per_tensor=True)
    torch.testing.assert_close(scale, torch.tensor([0.01, 0.01]))
    assert q.tolist() == [[127, -50, 0], [20, 10, -40]]


@pytest.mark.parametrize("mode", quantize.MODES)
def test_int8_linear_layers_compute_with_the_rounded_weights(mode):
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    q, scale = quantize.int8_weights(linear.weight)
    module = quantize.build_int8_linear(mode, q, scale, linear.bias.detach())
    x = torch.randn(3, 5, 64)
    rounded = torch.nn.functional.linear(x, q.float() * scale[:, None], linear.bias)
    out = module(x)
    assert out.shape == (3, 5, 32)
    # weight-only: exact up to float error; dynamic: activations are rounded to 8 bits too
    tolerance = 1e-4 if mode == "weight-only" else 0.05 * rounded.abs().max().item()
    torch.testing.assert_close(out.detach(), rounded.detach(), atol=tolerance, rtol=0)


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_llama], ids=["gpt2", "llama"])
@pytest.mark.parametrize("mode", quantize.MODES)
def test_quantized_logits_stay_close_and_round_trip(tmp_path, build, mode):
    model, x = build(), tokens(length=12)
    with torch.no_grad():
        reference = model(x).logits
    quantized = quantize.quantize_model(model, mode)
    # 2 layers of attention + MLP projections (GPT-2: c_attn, c_proj, c_fc, c_proj; Llama: q k v o gate up down)
    assert "lm_head" in quantized and len(quantized) == (15 if build is tiny_llama else 9)
    with torch.no_grad():
        logits = model(x).logits
    error = (logits - reference).abs().max() / reference.abs().max()
    assert 0 < error < 0.05  # changed, but only by rounding
    agreement = (logits.argmax(-1) == reference.argmax(-1)).float().mean()
    assert agreement > 0.9
    quantize.save_quantized(model, quantized, tmp_path, mode)
    loaded = quantize.load_quantized(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, logits)


def test_skip_lm_head_keeps_it_tied(tmp_path):
    model = tiny_gpt2()
    quantized = quantize.quantize_model(model, "weight-only", skip_lm_head=True)
    assert "lm_head" not in quantized and model.lm_head.weight is model.transformer.wte.weight
    quantize.save_quantized(model, quantized, tmp_path, "weight-only")
    loaded = quantize.load_quantized(tmp_path)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    x = tokens()
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)


def test_cli_reports_size_and_latency(tiny_gpt2_dir, tmp_path):
    output = tmp_path / "int8"
    assert quantize.main(["--model", str(tiny_gpt2_dir), "--output", str(output), "--latency-batch", "1",
                          "--latency-tokens", "16", "--skip-lm-head"]) == 0
    record = json.loads((output / "compfair_compression.json").read_text())
    assert record["method"] == "quantize_int8_dynamic" and record["settings"]["skip_lm_head"]
    assert record["int8_params"] == 2 * (32 * 96 + 32 * 32 + 32 * 128 + 128 * 32)
    # int8 projections (+ a float scale per row) instead of float32: the checkpoint shrinks by that much
    saved = 3 * record["int8_params"] - 4 * 2 * (96 + 32 + 128 + 32)
    assert record["source_size_bytes"] - record["size_bytes"] == pytest.approx(saved, abs=2000)
    assert record["latency"]["fp32_seconds"] > 0 and record["latency"]["int8_seconds"] > 0
    with pytest.raises(quantize.QuantizeError, match="not a `compfair compress quantize --method int8` output: "
                       "evaluate any other checkpoint .* with `lm_eval --model hf"):
        quantize.load_quantized(tiny_gpt2_dir)


@pytest.mark.slow
@pytest.mark.newest
def test_quantized_checkpoint_runs_through_lm_eval(tiny_gpt2_dir, tmp_path, lm_eval_cli):
    output = tmp_path / "int8"
    assert quantize.main(["--model", str(tiny_gpt2_dir), "--output", str(output), "--latency-batch", "0"]) == 0
    results = lm_eval_cli(["--model", "compfair-quantized", "--model_args", f"pretrained={output}",
                           "--tasks", "compfair_stereoset", "--limit", "6"], tmp_path / "lm_eval")
    metrics = results["results"]["compfair_stereoset"]
    from transformers import AutoTokenizer

    from known_answers import direct_metrics

    direct = direct_metrics("compfair_stereoset", quantize.load_quantized(output), AutoTokenizer.from_pretrained(
        tiny_gpt2_dir), {"pretrained": str(output)}, limit=6)
    assert (metrics["ss,none"], metrics["lms,none"]) == pytest.approx((direct["ss"], direct["lms"]))


# --------------------------------------------------------------------------- library methods (llm-compressor, torchao)

@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    from tests.test_sparsify import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("tiny_llama_q"))


@pytest.mark.parametrize("method,bits", [("rtn", 4), ("gptq", 4), ("rtn", 8)])
def test_llmcompressor_methods_reach_their_bit_width_and_load_with_transformers(tiny_llama_dir, tmp_path, method,
                                                                                bits):
    from transformers import AutoModelForCausalLM

    from compressors import verify
    from tests.test_sparsify import _assert_cached_equals_uncached

    output = tmp_path / f"{method}{bits}"
    assert quantize.main(["--model", str(tiny_llama_dir), "--output", str(output), "--method", method,
                          "--bits", str(bits), "--group-size", "32",
                          *(["--num-examples", "4", "--block-size", "32"] if method in quantize.CALIBRATED else [])]) == 0
    record = json.loads((output / "compfair_compression.json").read_text())
    assert record["measured"]["bits"] == bits and record["measured"]["storage"] == f"packed int{bits} in int32"
    assert record["measured"]["equal_to_source"] is False
    assert record["settings"]["evaluate_with"].startswith("lm_eval --model hf")
    model = AutoModelForCausalLM.from_pretrained(output).eval()
    source = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    x = tokens(length=12)
    with torch.no_grad():
        logits, reference = model(x).logits, source(x).logits
    error = ((logits - reference).abs().max() / reference.abs().max()).item()
    assert 0 < error < (0.5 if bits == 4 else 0.05)  # changed, by rounding only
    # the dequantized weights the model computes with lie on a 2**bits grid in every group of 32 inputs
    for name, layer in model.named_modules():
        if name.endswith("mlp.up_proj"):
            weight = next(t for n, t in layer.state_dict().items() if n == "weight")
            assert verify.distinct_per_group(weight, 32) <= 2 ** bits, name
    assert torch.equal(model.model.embed_tokens.weight, source.model.embed_tokens.weight)
    _assert_cached_equals_uncached(model)


def test_torchao_int8_is_int8_on_disk_and_loads(tiny_llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    output = tmp_path / "tao8"
    assert quantize.main(["--model", str(tiny_llama_dir), "--output", str(output), "--method", "torchao-int8"]) == 0
    measured = json.loads((output / "compfair_compression.json").read_text())["measured"]
    assert measured["bits"] == 8 and measured["storage"] == "int8" and measured["linear_layers"] == 14
    assert measured["equal_to_source"] is False
    model = AutoModelForCausalLM.from_pretrained(output).eval()
    source = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    x = tokens(length=12)
    with torch.no_grad():
        error = ((model(x).logits - source(x).logits).abs().max() / source(x).logits.abs().max()).item()
    assert 0 < error < 0.05


@pytest.mark.parametrize("method", ["torchao-int4", "awq"])
def test_gpu_only_methods_say_so_before_loading(tmp_path, capsys, method):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(quantize.QuantizeError, match=f"--method {method} needs a GPU") as raised:
        quantize.main(["--model", str(tmp_path / "no_such_model"), "--output", str(tmp_path / "o"),
                       "--method", method])
    assert "no_such_model" not in str(raised.value)  # refused before looking at the model


def test_group_size_that_does_not_divide_is_refused(tiny_llama_dir, tmp_path, capsys):
    with pytest.raises(quantize.QuantizeError, match="does not divide the layer input widths"):
        quantize.main(["--model", str(tiny_llama_dir), "--output", str(tmp_path / "o"), "--method", "rtn",
                       "--group-size", "48"])


def test_equal_to_source_is_flagged(tiny_llama_dir, tmp_path):
    import shutil

    from compressors import verify

    copy = tmp_path / "copy"
    shutil.copytree(tiny_llama_dir, copy)
    assert verify.measure_weights(copy, tiny_llama_dir)["equal_to_source"] is True
