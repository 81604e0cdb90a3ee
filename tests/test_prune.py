"""Head pruning: gated == physically pruned, exact parameter savings, importance vs autograd and
finite differences, normalisation, the iterative schedule, save/load, errors."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from compressors import prune
from compressors.pruned_gpt2 import PrunedGPT2LMHeadModel
from compressors.pruned_llama import PrunedLlamaForCausalLM

VOCAB = 64


def tiny_gpt2(seed=0, n_layer=2, n_head=4, n_embd=32):
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=VOCAB, n_positions=64,
                        bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # non-zero biases, so that a wrongly sliced bias shows
        for block in model.transformer.h:
            block.attn.c_attn.bias.normal_(std=0.1)
            block.attn.c_proj.bias.normal_(std=0.1)
    return model


def tiny_llama(seed=0, attention_bias=False):
    torch.manual_seed(seed)  # 6 query heads in 2 key/value groups of 3, head_dim 16
    config = LlamaConfig(hidden_size=96, intermediate_size=64, num_hidden_layers=2, num_attention_heads=6,
                         num_key_value_heads=2, vocab_size=VOCAB, tie_word_embeddings=True,
                         attention_bias=attention_bias, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return LlamaForCausalLM(config).eval()


def tokens(batch=3, length=10, seed=1):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def gate_mask(model, removed: dict[int, list[int]]) -> list[torch.Tensor]:
    gates = []
    for index, layer in enumerate(prune.attention_layers(model)):
        gate = torch.ones(1, layer.num_heads)
        gate[0, removed.get(index, [])] = 0
        gates.append(gate)
    return gates


def keep_from(model, removed):
    return [[h for h in range(layer.num_heads) if h not in removed.get(i, [])]
            for i, layer in enumerate(prune.attention_layers(model))]


def n_params(model):
    """Reported parameters: a pruned model's zero placeholder heads do not count."""
    from compressors.metadata import count_parameters

    return count_parameters(model)


CASES = [
    ("gpt2", tiny_gpt2, {0: [1, 3], 1: [0]}),
    ("gpt2 empty layer", tiny_gpt2, {0: [2], 1: [0, 1, 2, 3]}),
    ("llama uneven groups", tiny_llama, {0: [1], 1: [0, 4, 5]}),
    ("llama whole group", tiny_llama, {0: [0, 1, 2], 1: [3, 4, 5]}),
    ("llama bias, empty layer", lambda: tiny_llama(attention_bias=True), {0: [0, 1, 2, 3, 4, 5], 1: [2]}),
]


@pytest.mark.parametrize("name,build,removed", CASES, ids=[c[0] for c in CASES])
def test_pruned_model_equals_gated_model(name, build, removed):
    model, x = build(), tokens()
    with torch.no_grad(), prune.gated(model, gate_mask(model, removed)):
        gated_logits = model(x).logits
    pruned = prune.keep_heads(model, keep_from(model, removed))
    with torch.no_grad():
        pruned_logits, full_logits = pruned(x).logits, model(x).logits
    assert isinstance(pruned, (PrunedGPT2LMHeadModel, PrunedLlamaForCausalLM))
    torch.testing.assert_close(pruned_logits, gated_logits, atol=1e-5, rtol=0)
    assert (pruned_logits - full_logits).abs().max() > 1e-3  # the removed heads mattered
    heads_left = [layer.num_heads for layer in prune.attention_layers(pruned)]
    assert heads_left == [layer.num_heads - len(removed.get(i, [])) for i, layer in
                          enumerate(prune.attention_layers(model))]


def test_gpt2_parameter_count_falls_by_exactly_the_removed_heads():
    model, removed = tiny_gpt2(), {0: [1, 3], 1: [0]}
    embed, head_dim = 32, 8
    per_head = 3 * (embed * head_dim + head_dim) + head_dim * embed  # q,k,v columns + bias, c_proj rows
    pruned = prune.keep_heads(model, keep_from(model, removed))
    assert n_params(model) - n_params(pruned) == 3 * per_head
    attn = pruned.transformer.h[0].attn
    assert attn.c_attn.weight.shape == (embed, 3 * 2 * head_dim) and attn.c_proj.weight.shape == (2 * head_dim, embed)


def test_llama_parameter_count_counts_query_heads_and_emptied_groups():
    model = tiny_llama(attention_bias=True)
    hidden, head_dim = 96, 16
    query_head = hidden * head_dim + head_dim + head_dim * hidden  # q_proj rows (+bias), o_proj columns
    kv_group = 2 * (hidden * head_dim + head_dim)  # k_proj and v_proj rows (+bias)
    removed = {0: [0, 1, 2, 4], 1: [5]}  # layer 0 loses group 0 entirely
    pruned = prune.keep_heads(model, keep_from(model, removed))
    assert n_params(model) - n_params(pruned) == 5 * query_head + kv_group
    assert pruned.config.kv_groups_per_layer == [[2], [3, 2]]


def reference_importance(model, blocks):
    """E_x |dL(x)/dg_h| one example at a time with torch.autograd.grad."""
    layers = prune.attention_layers(model)
    total = [torch.zeros(layer.num_heads, dtype=torch.float64) for layer in layers]
    for block in blocks:
        gates = [torch.ones(1, layer.num_heads, dtype=torch.float64, requires_grad=True) for layer in layers]
        with prune.gated(model, gates):
            loss = prune.example_losses(model, block[None])[0]
        for t, grad in zip(total, torch.autograd.grad(loss, gates)):
            t += grad[0].abs()
    return [t / len(blocks) for t in total]


def finite_difference(model, block, layer, head, eps=1e-4):
    losses = []
    for sign in (1, -1):
        gates = [torch.ones(1, layer.num_heads, dtype=torch.float64) for layer in prune.attention_layers(model)]
        gates[layer][0, head] += sign * eps
        with torch.no_grad(), prune.gated(model, gates):
            losses.append(float(prune.example_losses(model, block[None])[0]))
    return (losses[0] - losses[1]) / (2 * eps)


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_llama], ids=["gpt2", "llama"])
def test_importance_matches_autograd_and_finite_differences(build):
    model = build().double()
    blocks = tokens(batch=5, length=12, seed=3)
    scores = prune.head_importance(model, blocks, batch_size=2)  # batches of 2, 2, 1 examples
    reference = reference_importance(model, blocks)
    for ours, ref in zip(scores, reference):
        torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-9)
    # per-example gradients, not the gradient of the batch: |sum| != sum |.| in general
    batch_grad = prune.head_importance(model, blocks, batch_size=5)
    assert all(torch.allclose(a, b) for a, b in zip(scores, batch_grad))
    # Llama's RMSNorm computes in float32 even in a float64 model: a coarser step and tolerance there
    eps, rel = (1e-4, 1e-5) if build is tiny_gpt2 else (1e-3, 2e-3)
    derivative = finite_difference(model, blocks[0], layer=1, head=2, eps=eps)
    gates = [torch.ones(1, layer.num_heads, dtype=torch.float64, requires_grad=True) for layer in prune.attention_layers(model)]
    with prune.gated(model, gates):
        loss = prune.example_losses(model, blocks[0][None])[0]
    assert torch.autograd.grad(loss, gates[1])[0][0, 2].item() == pytest.approx(derivative, rel=rel, abs=1e-8)


def test_group_importance_gates_whole_groups():
    model = tiny_llama().double()
    blocks = tokens(batch=4, length=12, seed=5)
    scores = prune.head_importance(model, blocks, batch_size=4, unit="group")
    assert [len(s) for s in scores] == [2, 2]
    layers = prune.attention_layers(model)
    expected = torch.zeros(2, dtype=torch.float64)
    for block in blocks:  # one gate per group, shared by its 3 query heads
        group_gates = torch.ones(2, dtype=torch.float64, requires_grad=True)
        gates = [torch.ones(1, 6, dtype=torch.float64), group_gates.repeat_interleave(3)[None]]
        with prune.gated(model, gates):
            loss = prune.example_losses(model, block[None])[0]
        expected += torch.autograd.grad(loss, group_gates)[0].abs()
    torch.testing.assert_close(scores[1].double(), expected / len(blocks), rtol=1e-6, atol=1e-10)
    assert layers[1].group_of_head == [0, 0, 0, 1, 1, 1]


def test_normalisation():
    scores = [torch.tensor([3.0, 4.0]), torch.tensor([1.0, 0.0, 0.0])]
    layer = prune.normalize(scores, "layer")
    torch.testing.assert_close(layer[0], torch.tensor([0.6, 0.8]))
    torch.testing.assert_close(layer[1], torch.tensor([1.0, 0.0, 0.0]))
    global_ = prune.normalize(scores, "global")
    torch.testing.assert_close(torch.cat(global_), torch.tensor([3.0, 4.0, 1.0, 0.0, 0.0]) / 26 ** 0.5)
    # per-layer normalisation changes which head is lowest: a layer of large scores loses one
    scores = [torch.tensor([10.0, 20.0]), torch.tensor([1.0, 1.1])]
    assert prune.lowest_units(prune.normalize(scores, "layer"), 1) == {0: [0]}
    assert prune.lowest_units(prune.normalize(scores, "global"), 1) == {1: [0]}


def test_lowest_units_keeps_each_layers_last_head_unless_asked():
    scores = [torch.tensor([0.1, 0.5]), torch.tensor([0.05]), torch.tensor([0.2, 0.3, 0.9])]
    assert prune.lowest_units(scores, 3) == {0: [0], 2: [0, 1]}
    assert prune.lowest_units(scores, 3, allow_empty_layers=True) == {0: [0], 1: [0], 2: [0]}
    assert prune.lowest_units(scores, 10) == {0: [0], 2: [0, 1]}  # all that may go


def test_count_to_remove_follows_the_papers_schedule():
    remaining, left = 144, []
    for _ in range(3):
        remaining -= prune.count_to_remove(remaining, 0.05)
        left.append(remaining)
    assert left == [137, 130, 123]  # 7.2 -> 7, 6.85 -> 7, 6.5 -> 7 (half up): 85% of 144
    assert prune.count_to_remove(10, 0.01) == 1


def test_iterative_schedule_removes_the_right_number_of_heads():
    model = tiny_gpt2(n_layer=3, n_head=4)
    blocks = tokens(batch=4, length=12, seed=7)
    result = prune.prune_iteratively(model, blocks, iterations=3, ratio=0.25, log=lambda _: None)
    # 12 heads: remove round(3.0)=3 -> 9, round(2.25)=2 -> 7, round(1.75)=2 -> 5
    assert [it["heads_left"] for it in result.iterations] == [9, 7, 5]
    assert [it["heads_removed"] for it in result.iterations] == [3, 2, 2]
    heads_left = [layer.num_heads for layer in prune.attention_layers(result.model)]
    assert sum(heads_left) == 5 and min(heads_left) >= 1
    removed = result.removed
    assert sum(len(v) for v in removed.values()) == 7
    assert all(len(set(v)) == len(v) and set(v) <= set(range(4)) for v in removed.values())
    # the pruned model is the original with exactly the recorded original heads gated off
    with torch.no_grad(), prune.gated(model, gate_mask(model, removed)):
        expected = model(blocks).logits
    torch.testing.assert_close(result.model(blocks).logits, expected, atol=1e-5, rtol=0)


def test_iteration_rescoring_uses_the_pruned_model():
    model = tiny_llama()
    blocks = tokens(batch=4, length=12, seed=9)
    result = prune.prune_iteratively(model, blocks, iterations=2, ratio=0.3, unit="group", log=lambda _: None)
    # 4 groups: remove round(1.2)=1 -> 3, then round(0.9)=1 -> 2; never a layer's last group
    assert [it["heads_left"] for it in result.iterations] == [9, 6]
    assert [len(g) for g in result.model.config.kv_groups_per_layer] == [1, 1]
    assert [len(s) for s in result.iterations[1]["importance"]] == [1, 2] or \
        [len(s) for s in result.iterations[1]["importance"]] == [2, 1]


def test_save_and_load_round_trip_in_process(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    model = prune.keep_heads(tiny_gpt2(), [[0, 2], []])
    prune.save_pruned(model, None, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "pruned_gpt2" and config["heads_per_layer"] == [2, 0]
    assert config["auto_map"]["AutoModelForCausalLM"] == "pruned_gpt2.PrunedGPT2LMHeadModel"
    assert (tmp_path / "pruned_gpt2.py").is_file()
    assert type(AutoConfig.from_pretrained(tmp_path)).__name__ == "PrunedGPT2Config"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()  # no trust_remote_code: compfair's classes
    assert type(loaded) is PrunedGPT2LMHeadModel
    x = tokens()
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)


def test_generation_with_cache_through_an_empty_layer():
    for model in (prune.keep_heads(tiny_gpt2(), [[1], []]), prune.keep_heads(tiny_llama(), [[0, 4], []])):
        x = tokens(batch=2, length=6)
        with torch.no_grad():
            first = model(x, use_cache=True)
            step = model(x[:, :1], past_key_values=first.past_key_values).logits[:, -1]
            full = model(torch.cat([x, x[:, :1]], dim=1)).logits[:, -1]
        torch.testing.assert_close(step, full, atol=1e-5, rtol=0)


def test_errors_name_the_problem():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    neox = GPTNeoXForCausalLM(GPTNeoXConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                            intermediate_size=32, vocab_size=VOCAB))
    with pytest.raises(prune.UnsupportedArchitectureError, match="gpt_neox.*supported: gpt2.*llama"):
        prune.attention_layers(neox)
    blocks = tokens()
    for ratio in (0, 1, 1.5, -0.1):
        with pytest.raises(ValueError, match="ratio"):
            prune.prune_iteratively(tiny_gpt2(), blocks, ratio=ratio)
    with pytest.raises(ValueError, match="group needs grouped key/value"):
        prune.prune_iteratively(tiny_gpt2(), blocks, unit="group")


def test_too_little_data(tiny_gpt2_dir, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    text = tmp_path / "few.txt"
    text.write_text("A short line.\nAnother one.\n")
    with pytest.raises(ValueError, match="too little text"):
        prune.load_blocks([str(text)], tokenizer, None, block_size=64, seed=0)
    with pytest.raises(ValueError, match="too little text.*2 blocks of 4 tokens.*--min-blocks 10"):
        prune.load_blocks([str(text)], tokenizer, None, block_size=4, seed=0, min_blocks=10)
    blocks, n_texts = prune.load_blocks([str(text)], tokenizer, None, block_size=2, seed=0)
    assert n_texts == 2 and blocks.shape[1] == 2


def test_cli_writes_smaller_checkpoint_and_metadata(tiny_gpt2_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    text = tmp_path / "wiki.txt"
    text.write_text("\n".join(f"Sentence number {i} talks about the history of a town." for i in range(40)))
    output = tmp_path / "pruned"
    code = prune.main(["--model", str(tiny_gpt2_dir), "--data", str(text), "--num-examples", "30",
                       "--block-size", "16", "--iterations", "2", "--ratio", "0.25", "--output", str(output)])
    assert code == 0
    record = json.loads((output / "compfair_compression.json").read_text())
    assert record["method"] == "prune_heads" and record["heads_before"] == 8
    assert record["heads_after"] == 8 - 2 - 2 == sum(record["heads_per_layer"])
    assert sum(len(v) for v in record["removed"]["heads"].values()) == 4
    assert record["params"] == record["source_params"] - 4 * (3 * (32 * 8 + 8) + 8 * 32)
    assert record["settings"]["num_examples"] == 30 and len(record["iterations"]) == 2
    assert len(record["iterations"][0]["importance"]) == 2
    loaded = AutoModelForCausalLM.from_pretrained(output)
    assert n_params(loaded) == record["params"]
    import transformers

    versions = record["versions"]
    assert versions["transformers"] == transformers.__version__ and versions["torch"] == torch.__version__
    assert versions["format_version"] == 2 and versions["lm_eval"] and versions["compfair"]
    assert versions["compfair_commit"] is None or len(versions["compfair_commit"]) == 40
    with pytest.raises(SystemExit) as caught:
        prune.main(["--model", str(tiny_gpt2_dir), "--output", str(tmp_path / "x"), "--ratio", "2"])
    assert caught.value.code == 2 and "argument --ratio: 2 is out of range" in capsys.readouterr().err
