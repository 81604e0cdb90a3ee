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
    with pytest.raises(FileNotFoundError, match="not a `compfair compress quantize` output"):
        quantize.load_quantized(tiny_gpt2_dir)


@pytest.mark.slow
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
