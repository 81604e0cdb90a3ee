"""Generation invariants of every compressed model type, each reloaded from disk the way lm_eval loads it.

- Per-step logits of cached greedy decoding equal one uncached forward over the same prefix (token
  equality is not enough: a broken cache can still pick the same greedy tokens on a tiny model).
- Left-padded batched generation equals generating each prompt alone.
- Pruned models equal the gated teacher; the stored layout has no attention forward of its own.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from compressors import checks, distill, prune, quantize

VOCAB, PAD = 96, 0
FLOAT_TOL = 1e-5  # max |cached - uncached| / max |logit|; measured < 1e-6 on these models
# dynamic int8 quantizes each call's activations with one scale per tensor, so a one-token cached step
# and the full prefix are rounded differently: measured 2.5e-2 here (0.6 on SmolLM2, whose first-token
# activations are outliers); weight-only int8 keeps float activations and meets the float tolerance
TOL = {"int8 dynamic": 5e-2}


def tiny_gpt2(seed=0, vocab=VOCAB):
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=2, n_head=4, n_embd=32, vocab_size=vocab, n_positions=64, bos_token_id=1,
                        eos_token_id=2, pad_token_id=PAD)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for block in model.transformer.h:  # non-zero biases: a placeholder head must not leak them
            block.attn.c_attn.bias.normal_(std=0.1)
            block.attn.c_proj.bias.normal_(std=0.1)
    return model


def tiny_llama(seed=0, heads=9, kv_heads=3, layers=2, attention_bias=False, vocab=VOCAB):
    torch.manual_seed(seed)  # head_dim 8
    config = LlamaConfig(hidden_size=8 * heads, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab,
                         head_dim=8, attention_bias=attention_bias, bos_token_id=1, eos_token_id=2,
                         pad_token_id=PAD, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def saved_and_loaded(model, path):
    prune.save_pruned(model, None, path) if "pruned" in model.config.model_type else model.save_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path).eval()  # as lm_eval's HFLM loads it


# name -> (teacher builder, removed heads per layer or None, expected logical layout)
PRUNED = {
    "pruned gpt2 (empty layer)": (tiny_gpt2, {0: [1, 3], 1: [0, 1, 2, 3]}, [2, 0]),
    "pruned llama equal groups": (tiny_llama, {0: [0, 3, 6], 1: [2, 5, 8]}, [[2, 2, 2], [2, 2, 2]]),
    "pruned llama unequal groups": (tiny_llama, {0: [3, 4, 8], 1: [0, 1, 2, 4]}, [[3, 1, 2], [2, 3]]),
    "pruned llama empty layer": (lambda: tiny_llama(attention_bias=True), {0: list(range(9)), 1: [7]},
                                 [[], [3, 3, 2]]),
}


def pruned_pair(name, tmp_path):
    build, removed, layout = PRUNED[name]
    teacher = build()
    keep = [[h for h in range(layer.num_heads) if h not in removed.get(i, [])]
            for i, layer in enumerate(prune.attention_layers(teacher))]
    model = saved_and_loaded(prune.keep_heads(teacher, keep), tmp_path / "pruned")
    logical = getattr(model.config, "heads_per_layer", None) or model.config.kv_groups_per_layer
    assert logical == layout
    return teacher, removed, model


def distilled(build, tmp_path):
    """A few real distillation steps (compressors/distill.py) from a tiny teacher with the GPT-2 tokenizer."""
    from conftest import SHIPPED_DATA, build_gpt2_tokenizer

    teacher = build(vocab=50257)
    teacher.save_pretrained(tmp_path / "teacher")
    build_gpt2_tokenizer().save_pretrained(tmp_path / "teacher")
    settings = distill.DistillSettings(
        output=str(tmp_path / "student"), teacher=str(tmp_path / "teacher"),
        layers=list(range(0, teacher.config.num_hidden_layers, 2)), data=str(SHIPPED_DATA / "bold_wiki"),
        data_limit=60, block_size=16, batch_size=4, max_steps=3, save_steps=100, logging_steps=1, eval_blocks=0,
        warmup=0, seed=0)
    distill.distill(settings)
    return AutoModelForCausalLM.from_pretrained(settings.output).eval()


def int8(mode, tmp_path):
    model = tiny_gpt2()
    quantize.save_quantized(model, quantize.quantize_model(model, mode), tmp_path / "int8", mode)
    return quantize.load_quantized(tmp_path / "int8")  # its own loader (transformers has none)


MODELS = {
    **{name: (lambda tmp, name=name: pruned_pair(name, tmp)[2]) for name in PRUNED},
    "distilled gpt2": lambda tmp: distilled(tiny_gpt2, tmp),
    "distilled llama": lambda tmp: distilled(lambda vocab: tiny_llama(layers=3, vocab=vocab), tmp),
    "int8 dynamic": lambda tmp: int8("dynamic", tmp),
    "int8 weight-only": lambda tmp: int8("weight-only", tmp),
}


def prompts(seed=3):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (1, n), generator=generator) for n in (7, 3, 5)]


@pytest.mark.parametrize("name", MODELS)
def test_cached_decoding_logits_equal_the_full_forward(name, tmp_path):
    model = MODELS[name](tmp_path)
    for ids in prompts():
        difference, sequences = checks.cached_vs_uncached(model, ids, new_tokens=10)
        assert sequences.shape[1] == ids.shape[1] + 10
        assert difference <= TOL.get(name, FLOAT_TOL), f"{name}: cached vs uncached {difference:.2e}"


@pytest.mark.parametrize("name", MODELS)
def test_left_padded_batch_generates_what_each_prompt_generates_alone(name, tmp_path):
    model = MODELS[name](tmp_path)
    singles = prompts()
    width = max(p.shape[1] for p in singles)
    ids = torch.cat([torch.nn.functional.pad(p, (width - p.shape[1], 0), value=PAD) for p in singles])
    mask = torch.cat([torch.nn.functional.pad(torch.ones_like(p), (width - p.shape[1], 0)) for p in singles])
    settings = {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False, "pad_token_id": PAD,
                "output_logits": True, "return_dict_in_generate": True}
    with torch.no_grad():
        batch = model.generate(ids, attention_mask=mask, **settings)
        alone = [model.generate(p, attention_mask=torch.ones_like(p), **settings) for p in singles]
    for row, single in enumerate(alone):
        assert batch.sequences[row, width:].tolist() == single.sequences[0, single.sequences.shape[1] - 8:].tolist()
        batch_logits = torch.stack([step[row] for step in batch.logits])
        single_logits = torch.stack([step[0] for step in single.logits])
        difference = checks.relative_difference(batch_logits, single_logits)
        assert difference <= TOL.get(name, FLOAT_TOL), f"{name}: batched vs alone {difference:.2e}"


@pytest.mark.parametrize("name", PRUNED)
def test_reloaded_pruned_model_equals_the_gated_teacher(name, tmp_path):
    teacher, removed, model = pruned_pair(name, tmp_path)
    gated = prune.gated_reference(teacher, removed)
    for ids in prompts():
        with torch.no_grad():
            full, pruned = teacher(ids).logits, model(ids).logits
        assert checks.relative_difference(pruned, gated(ids)) <= FLOAT_TOL
        assert checks.relative_difference(pruned, full) > 1e-3  # the removed heads mattered
    result = checks.check_compressed(model, None, reference=gated, reference_tol=1e-4, log=lambda _: None)
    assert result["reference_diff"] <= 1e-5


def test_stored_layouts_add_the_fewest_rows():
    from compressors.pruned_llama import physical_layout

    # [9, 1]: d=3 adds 2 k/v copies + 2 zero queries (d=9: 8 zero queries, d=1: 8 k/v copies)
    assert physical_layout([9, 1]) == (3, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, None, None], [0, 0, 0, 1])
    assert physical_layout([3, 1, 2]) == (3, [0, 1, 2, 3, None, None, 4, 5, None], [0, 1, 2])  # ties: larger d
    assert physical_layout([2, 2]) == (2, [0, 1, 2, 3], [0, 1])
    assert physical_layout([]) == (1, [None], [None])


def test_no_compfair_attention_or_model_class_defines_forward():
    from compressors import pruned_gpt2, pruned_llama

    classes = [obj for module in (pruned_gpt2, pruned_llama) for obj in vars(module).values()
               if inspect.isclass(obj) and obj.__module__ == module.__name__ and issubclass(obj, torch.nn.Module)]
    assert len(classes) == 4
    assert [cls.__name__ for cls in classes if "forward" in cls.__dict__] == []


def test_check_refuses_a_model_whose_cache_is_wrong():
    model = tiny_llama()
    for layer in model.model.layers:  # every layer reads and writes the first layer's cache: generation breaks
        layer.self_attn.layer_idx = 0
    difference, _ = checks.cached_vs_uncached(model, prompts()[0])
    assert difference > 1e-2
    with pytest.raises(checks.CompressionCheckError, match="KV cache gives other logits"):
        checks.check_compressed(model, None, log=lambda _: None)


def test_prune_writes_nothing_when_the_pruned_model_fails_its_check(tiny_gpt2_dir, tmp_path, monkeypatch):
    text = tmp_path / "wiki.txt"
    text.write_text("\n".join(f"Sentence number {i} talks about the history of a town." for i in range(40)))
    def wrong(model, removed):
        return (lambda ids: model(ids).logits)  # the ungated teacher
    monkeypatch.setattr(prune, "gated_reference", wrong)
    with pytest.raises(checks.CompressionCheckError, match="pruned vs gated teacher"):
        prune.main(["--model", str(tiny_gpt2_dir), "--data", str(text), "--num-examples", "30", "--block-size", "16",
                    "--iterations", "1", "--ratio", "0.25", "--output", str(tmp_path / "out")])
    assert not any((tmp_path / "out").glob("*"))  # the checked (created, writable) folder stays empty


def test_checkpoint_of_the_old_format_is_refused_with_a_resave_hint(tmp_path):
    import json

    pruned_pair("pruned llama unequal groups", tmp_path)
    path = tmp_path / "pruned"  # fabricate what compfair < format 2 wrote: no version, remote code with a forward
    config = json.loads((path / "config.json").read_text())
    assert config.pop("compfair_format_version") == 2
    (path / "config.json").write_text(json.dumps(config))
    code = (path / "pruned_llama.py").read_text()
    (path / "pruned_llama.py").write_text(code.replace(
        "class PrunedLlamaForCausalLM(", "    def forward(self, *args, **kwargs):\n        raise AssertionError\n\n\n"
        "class PrunedLlamaForCausalLM("))
    with pytest.raises(ValueError, match="pruned-model format 1.*re-save it.*compfair compress prune"):
        AutoModelForCausalLM.from_pretrained(path)


@pytest.mark.slow
def test_pruned_smollm2_continuations_through_lm_eval_equal_uncached_greedy(tmp_path):
    """The pruned real SmolLM2 on lm_eval's generate_until path (toxicity task) writes what
    transformers' uncached greedy decoding writes for the same prompts."""
    import json
    import os
    import subprocess
    import sys

    from transformers import AutoTokenizer

    from compfair_tasks.models import embedded_model_dir
    from conftest import OFFLINE_ENV

    output = tmp_path / "smollm2_pruned"
    assert prune.main(["--model", str(embedded_model_dir("smollm2-135m")), "--num-examples", "8", "--block-size",
                       "32", "--min-blocks", "2", "--iterations", "1", "--batch-size", "4", "--output",
                       str(output)]) == 0
    groups = json.loads((output / "config.json").read_text())["kv_groups_per_layer"]
    assert any(len(set(layer)) > 1 for layer in groups)  # unequal groups: the padded/duplicated layout is used
    task = "compfair_toxicity_rtp_offline"
    command = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={output},dtype=float32",
               "--tasks", task, "--limit", "2", "--gen_kwargs", "do_sample=false", "--batch_size", "2",
               "--metadata", '{"scorer": "profanity-check"}', "--log_samples", "--output_path", str(tmp_path / "out")]
    done = subprocess.run(command, env={**os.environ, **OFFLINE_ENV}, capture_output=True, text=True, timeout=1800,
                          check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    samples = [json.loads(line) for path in (tmp_path / "out").rglob(f"samples_{task}_*.jsonl")
               for line in path.read_text().splitlines()]
    assert len(samples) == 2
    model = AutoModelForCausalLM.from_pretrained(output, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(output)
    for sample in samples:
        prompt = sample["arguments"]["gen_args_0"]["arg_0"]
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            reference = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False,
                                       use_cache=False, pad_token_id=tokenizer.eos_token_id)
        expected = tokenizer.decode(reference[0, ids.shape[1]:], skip_special_tokens=True)
        continuations = sample["resps"][0]
        print(f"{prompt!r} -> {continuations[0]!r}")
        assert continuations[0] == expected and len(set(continuations)) == 1  # greedy: K identical copies
        assert len(expected.split()) >= 5 and "---" not in expected  # words, not the old cache bug's dashes
