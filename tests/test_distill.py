"""Distillation compressor: student shape, weight copy, loss, accumulation scaling, training, exact resume."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
)

from compressors import distill as d
from conftest import OFFLINE_ENV, REPO_ROOT

torch.set_num_threads(1)  # the machine is shared; one thread is faster under load


def tiny_gpt2(n_layer=4, vocab=96, seed=0, sharp=1.0) -> GPT2LMHeadModel:
    """Dropout-free random GPT-2; `sharp` scales the final norm so the teacher's next-token distribution is peaked."""
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=n_layer, n_head=2, n_embd=16, n_positions=64, vocab_size=vocab,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.3,
                        bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        model.transformer.ln_f.weight.mul_(sharp)
    return model.eval().requires_grad_(False)


def tiny_llama(n_layer=5, vocab=96, seed=0, tie=False) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=24, intermediate_size=48, num_hidden_layers=n_layer,
                         num_attention_heads=3, num_key_value_heads=1, max_position_embeddings=64,
                         tie_word_embeddings=tie, initializer_range=0.3, bos_token_id=0, eos_token_id=0)
    return LlamaForCausalLM(config).eval().requires_grad_(False)


def random_blocks(n, length, vocab=96, seed=1) -> torch.Tensor:
    return torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def sharp_teacher_dir(tiny_gpt2_dir, tmp_path_factory):
    """The tiny fixture GPT-2 with a peaked output distribution, so KL to it is far from zero."""
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    with torch.no_grad():
        model.transformer.ln_f.weight.mul_(40.0)
    path = tmp_path_factory.mktemp("sharp_teacher")
    model.save_pretrained(path)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tiny_gpt2_dir).save_pretrained(path)
    return path


# --------------------------------------------------------------------------- student shape

def test_even_spacing_reproduces_distilgpt2_choice_and_presets_scale_with_depth():
    assert d.evenly_spaced_layers(6, 12) == [0, 2, 4, 7, 9, 11]  # DistilGPT2's blocks
    assert d.evenly_spaced_layers(4, 12) == [0, 4, 7, 11]
    assert d.evenly_spaced_layers(1, 5) == [0]
    assert [d.preset_depth(p, 12) for p in d.PRESETS] == [4, 6, 6, 8, 10, 10]
    assert [d.preset_depth(p, 30) for p in d.PRESETS] == [10, 15, 15, 20, 25, 25]  # SmolLM2-135M
    assert d.preset_depth("B", 2) == 1


@pytest.mark.parametrize("name,expected", [("B¬", "B¬"), ("Bnot", "B¬"), ("b-", "B¬"), ("D~", "D¬"), ("c", "C")])
def test_preset_names_accept_ascii_spellings(name, expected):
    assert d.canonical_preset(name) == expected


def test_settings_choose_preset_blocks_and_explicit_options_win():
    def plan(**kw):
        return d.DistillSettings(output="x", **kw).student_plan(12)
    assert plan() == ([0, 2, 4, 7, 9, 11], "teacher")  # default preset B
    assert plan(preset="D¬") == (d.evenly_spaced_layers(10, 12), "random")
    assert plan(preset="A", num_layers=3) == ([0, 6, 11], "teacher")
    assert plan(preset="B¬", layers=[1, 5], init="teacher") == ([1, 5], "teacher")


@pytest.mark.parametrize("kwargs,message", [
    ({"num_layers": 12}, "not smaller than its 12-block teacher"),
    ({"num_layers": 0}, "at least one block"),
    ({"layers": [0, 12]}, "outside the teacher's blocks 0..11"),
    ({"layers": [3, 3]}, "strictly increasing"),
    ({"layers": [4, 2]}, "strictly increasing"),
    ({"layers": []}, "empty"),
    ({"layers": [0, 1], "num_layers": 3}, "disagrees"),
])
def test_bad_student_shapes_are_refused_with_the_reason(kwargs, message):
    with pytest.raises(d.DistillError, match=message):
        d.choose_layers(12, **kwargs)


def test_unknown_preset_and_bad_layer_text_name_the_fix():
    with pytest.raises(d.DistillError, match="choose from A, B, B¬, C, D, D¬"):
        d.canonical_preset("E")
    with pytest.raises(d.DistillError, match="comma-separated"):
        d.parse_layer_list("0;2")
    assert d.parse_layer_list("0, 2,4") == [0, 2, 4]


def test_encoder_decoder_teacher_is_refused(tiny_seq2seq_dir):
    with pytest.raises(d.DistillError, match="not a decoder-only causal LM"):
        d.load_teacher(str(tiny_seq2seq_dir))


def test_cli_reports_too_deep_student_as_an_error(tiny_gpt2_dir, tmp_path, capsys):
    code = d.main(["--teacher", str(tiny_gpt2_dir), "--num-layers", "2", "--output", str(tmp_path / "s")])
    assert code == 2
    assert "not smaller than its 2-block teacher" in capsys.readouterr().err


def test_cli_reports_missing_teacher_and_empty_data(tiny_gpt2_dir, tmp_path, capsys):
    assert d.main(["--teacher", str(tmp_path / "nowhere"), "--output", str(tmp_path / "s")]) == 2
    assert "not found" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    assert d.main(["--teacher", str(tiny_gpt2_dir), "--data", str(empty), "--output", str(tmp_path / "s")]) == 2
    assert f"no text found in {empty}" in capsys.readouterr().err


# --------------------------------------------------------------------------- block influence (--layers auto)

def _final_norm(model):
    return model.transformer.ln_f if hasattr(model, "transformer") else model.model.norm


def _with_identity_blocks(model, blocks):
    """Zero the residual branches' output projections of `blocks`: each then returns its input exactly (BI 0)."""
    with torch.no_grad():
        for i in blocks:
            block = model.get_submodule(d.blocks_prefix(model))[i]
            outputs = ([block.attn.c_proj, block.mlp.c_proj] if hasattr(block, "attn")
                       else [block.self_attn.o_proj, block.mlp.down_proj])
            for linear in outputs:
                for tensor in (linear.weight, linear.bias):
                    if tensor is not None:
                        tensor.zero_()
    return model


def _hooked_influence(model, texts: list[list[int]]) -> list[float]:
    """Reference BI: hooks on every block's input and output, one unpadded text at a time, token-weighted mean."""
    blocks = model.get_submodule(d.blocks_prefix(model))
    seen = {}
    handles = []
    for i, block in enumerate(blocks):
        handles.append(block.register_forward_pre_hook(
            lambda m, args, kwargs, i=i: seen.__setitem__(("in", i), args[0] if args else kwargs["hidden_states"]),
            with_kwargs=True))
        handles.append(block.register_forward_hook(
            lambda m, args, out, i=i: seen.__setitem__(("out", i), out[0] if isinstance(out, tuple) else out)))
    sums, count = [0.0] * len(blocks), 0
    with torch.no_grad():
        for ids in texts:
            model(torch.tensor([ids]), use_cache=False)
            for i in range(len(blocks)):
                sums[i] += F.cosine_similarity(seen[("in", i)][0].double(), seen[("out", i)][0].double(), dim=-1).sum().item()
            count += len(ids)
    for handle in handles:
        handle.remove()
    return [1 - total / count for total in sums]


def _padded(texts: list[list[int]]) -> list[dict]:
    width = max(map(len, texts))
    ids = torch.tensor([t + [7] * (width - len(t)) for t in texts])
    mask = torch.tensor([[1] * len(t) + [0] * (width - len(t)) for t in texts])
    return [{"input_ids": ids, "attention_mask": mask}]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_block_influence_equals_hooked_per_token_cosine_and_identity_blocks_score_zero(family):
    model = tiny_gpt2(n_layer=5) if family == "gpt2" else tiny_llama(n_layer=5)
    _with_identity_blocks(model, [2])
    with torch.no_grad():  # a final norm that turns directions, as trained ones do
        _final_norm(model).weight.copy_(torch.rand(_final_norm(model).weight.shape, generator=torch.Generator().manual_seed(4)) + 0.1)
    texts = [[5, 9, 33, 2, 71, 14, 8], [40, 3, 3], [11, 60, 25, 90, 1]]  # unequal lengths: padding must not count
    scores = d.block_influence(model, _padded(texts))
    reference = _hooked_influence(model, texts)
    assert scores == pytest.approx(reference, abs=1e-6)  # float32 forward, padded vs not
    assert scores[2] == pytest.approx(0.0, abs=1e-12)
    assert min(scores[:2] + scores[3:]) > 0.01
    # the last hidden state is after the final norm: using it would mis-score the last block
    with torch.no_grad():
        out = model(**_padded(texts)[0], output_hidden_states=True)
    mask = _padded(texts)[0]["attention_mask"].bool()
    post_norm = 1 - F.cosine_similarity(out.hidden_states[-2], out.hidden_states[-1], dim=-1)[mask].mean().item()
    assert abs(post_norm - reference[-1]) > 0.05


def test_calibration_batches_are_a_seeded_sample_cut_to_length(tiny_gpt2_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    texts = [f"text number {i} " + "word " * i for i in range(20)]
    batches = d.calibration_batches(texts, tokenizer, n_texts=5, max_tokens=6, seed=1, batch_size=2)
    assert [len(b["input_ids"]) for b in batches] == [2, 2, 1]
    lengths = [int(n) for b in batches for n in b["attention_mask"].sum(1)]
    chosen = __import__("random").Random(1).sample(range(20), 5)
    assert lengths == [min(6, len(tokenizer(texts[i])["input_ids"])) for i in chosen]
    assert batches[0]["input_ids"][0, :lengths[0]].tolist() == tokenizer(texts[chosen[0]])["input_ids"][:6]
    with pytest.raises(d.DistillError, match="at least 1 calibration text"):
        d.calibration_batches(texts, tokenizer, n_texts=0, max_tokens=6)


def test_auto_layers_keep_the_highest_influence_blocks():
    assert d.highest_influence_layers([0.9, 0.1, 0.5, 0.05, 0.3], 3) == [0, 2, 4]
    assert d.highest_influence_layers([0.9, 0.2, 0.2, 0.2], 2) == [0, 1]  # a tie keeps the earlier block
    assert d.parse_layer_list(" Auto") == d.AUTO
    def plan(**kw):
        return d.DistillSettings(output="x", layers=d.AUTO, **kw).student_plan(6, [1, .1, .3, .2, .05, .9])
    assert plan(num_layers=4) == ([0, 2, 3, 5], "teacher")
    assert plan(preset="D¬") == ([0, 1, 2, 3, 5], "random")  # the preset's depth (10 of 12 -> 5 of 6)
    with pytest.raises(d.DistillError, match="one block influence score per teacher block"):
        d.DistillSettings(output="x", layers=d.AUTO).student_plan(6)


# --------------------------------------------------------------------------- weight copy

def _teacher_with_only(teacher, layers):
    """Reference: a copy of the teacher whose block list keeps only `layers`."""
    import copy

    pruned = copy.deepcopy(teacher)
    owner_path, _, name = d.blocks_prefix(teacher).rpartition(".")
    owner = pruned.get_submodule(owner_path)
    setattr(owner, name, torch.nn.ModuleList([getattr(owner, name)[i] for i in layers]))
    return pruned


@pytest.mark.parametrize("family", ["gpt2", "llama", "llama_tied"])
def test_teacher_init_student_computes_the_chosen_teacher_blocks(family):
    teacher = {"gpt2": lambda: tiny_gpt2(n_layer=5), "llama": lambda: tiny_llama(n_layer=5),
               "llama_tied": lambda: tiny_llama(n_layer=5, tie=True)}[family]()
    layers = [0, 3, 4]
    student = d.make_student(teacher, layers, "teacher").eval()
    assert student.config.num_hidden_layers == 3 and teacher.config.num_hidden_layers == 5
    ids = random_blocks(2, 12)
    reference = _teacher_with_only(teacher, layers)
    with torch.no_grad():
        expected = reference(ids, use_cache=False).logits
        got = student(ids, use_cache=False).logits
        full = teacher(ids, use_cache=False).logits
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, full, atol=1e-3)  # the dropped blocks mattered
    tied = student.get_output_embeddings().weight is student.get_input_embeddings().weight
    assert tied == teacher.config.tie_word_embeddings


def test_random_init_student_shares_no_teacher_weights():
    teacher = tiny_gpt2(n_layer=4)
    student = d.make_student(teacher, [0, 3], "random", seed=0)
    again = d.make_student(teacher, [0, 3], "random", seed=0)
    assert not torch.allclose(student.transformer.wte.weight, teacher.transformer.wte.weight)
    assert not torch.allclose(student.transformer.h[0].attn.c_attn.weight, teacher.transformer.h[0].attn.c_attn.weight)
    assert all(torch.equal(a, b) for a, b in zip(student.parameters(), again.parameters()))  # seeded


# --------------------------------------------------------------------------- loss

def test_loss_terms_match_hand_formulas():
    torch.manual_seed(0)
    student_logits, teacher_logits = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    student_hidden, teacher_hidden = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    labels = torch.randint(0, 7, (2, 5))
    labels[1, 3] = -100  # this target (predicted at position 2) is skipped
    weights = d.LossWeights(temperature=3.0, alpha_ce=0.2, alpha_clm=0.7, alpha_cos=0.1)
    sums, count = d.loss_sums(SimpleNamespace(logits=student_logits, hidden_states=(student_hidden,)),
                              SimpleNamespace(logits=teacher_logits, hidden_states=(teacher_hidden,)), labels, weights)
    kl = ce = cos = 0.0
    n = 0
    for b in range(2):
        for t in range(4):
            if labels[b, t + 1] == -100:
                continue
            n += 1
            p = torch.softmax(teacher_logits[b, t] / 3, -1)
            q = torch.softmax(student_logits[b, t] / 3, -1)
            kl += float((p * (p.log() - q.log())).sum()) * 9
            ce += -float(torch.log_softmax(student_logits[b, t], -1)[labels[b, t + 1]])
            s, u = student_hidden[b, t], teacher_hidden[b, t]
            cos += 1 - float(s @ u / (s.norm() * u.norm()))
    assert int(count) == n == 7
    assert float(sums["kl"]) == pytest.approx(kl, rel=1e-5)
    assert float(sums["clm"]) == pytest.approx(ce, rel=1e-5)
    assert float(sums["cos"]) == pytest.approx(cos, rel=1e-5)
    assert float(weights.total(sums)) == pytest.approx(0.2 * kl + 0.7 * ce + 0.1 * cos, rel=1e-5)


def test_loss_weights_are_validated():
    with pytest.raises(d.DistillError, match="temperature"):
        d.LossWeights(temperature=0)
    with pytest.raises(d.DistillError, match="not all zero"):
        d.LossWeights(alpha_ce=0, alpha_clm=0)


def _one_sgd_step(teacher, blocks, batch_size, grad_accum, output_dir, lr=0.5):
    student = d.make_student(teacher, [0, 2], "teacher")
    args = TrainingArguments(output_dir=str(output_dir), max_steps=1, per_device_train_batch_size=batch_size,
                             gradient_accumulation_steps=grad_accum, optim="sgd", learning_rate=lr,
                             max_grad_norm=0.0, warmup_steps=0, weight_decay=0.0, save_strategy="no",
                             logging_steps=1, report_to="none", seed=0, disable_tqdm=True)
    trainer = d.DistillationTrainer(model=student, args=args, teacher=teacher, train_dataset=d.PackedBlocks(blocks),
                                    data_collator=default_data_collator)
    trainer.train()
    return student, trainer.state.log_history[0]["loss"]


def test_gradient_accumulation_gives_the_gradient_of_the_doubled_batch(tmp_path):
    teacher = tiny_gpt2(n_layer=3, sharp=4.0)
    blocks = random_blocks(4, 16)
    accumulated, loss_accumulated = _one_sgd_step(teacher, blocks, 2, 2, tmp_path / "ga")
    doubled, loss_doubled = _one_sgd_step(teacher, blocks, 4, 1, tmp_path / "batch")

    # reference: plain gradient of the mean per-token loss over the 4 blocks
    reference = d.make_student(teacher, [0, 2], "teacher")
    sums, count = d.loss_sums(*d._forward_both(reference, teacher, {"input_ids": blocks}, d.LossWeights()), blocks,
                              d.LossWeights())
    mean_loss = d.LossWeights().total(sums) / count
    mean_loss.backward()

    assert loss_accumulated == pytest.approx(loss_doubled, rel=1e-5)
    assert loss_doubled == pytest.approx(mean_loss.item(), rel=1e-5)
    for (name, p_ga), p_batch, p_ref in zip(accumulated.named_parameters(), doubled.parameters(),
                                            reference.parameters()):
        expected = p_ref.detach() - 0.5 * p_ref.grad
        assert torch.allclose(p_ga, p_batch, atol=1e-6), name
        assert torch.allclose(p_batch, expected, atol=1e-6), name


# --------------------------------------------------------------------------- training runs

def settings_for(teacher_dir, output, shipped_data, **overrides) -> d.DistillSettings:
    base = dict(output=str(output), teacher=str(teacher_dir), data=str(shipped_data / "bold_wiki"),
                data_limit=300, block_size=32, batch_size=4, max_steps=6, save_steps=2, logging_steps=1,
                eval_blocks=8, learning_rate=2e-3, warmup=0, seed=3)
    return d.DistillSettings(**{**base, **overrides})


def test_training_lowers_the_loss_and_the_kl_to_the_teacher(sharp_teacher_dir, shipped_data, tmp_path):
    settings = settings_for(sharp_teacher_dir, tmp_path / "student", shipped_data, preset="Bnot", max_steps=10, learning_rate=1e-2)
    record = d.distill(settings)

    teacher = d.load_teacher(str(sharp_teacher_dir))
    trained = AutoModelForCausalLM.from_pretrained(settings.output)
    untrained = d.make_student(teacher, [0], "random", seed=settings.seed)
    from transformers import AutoTokenizer

    from compressors.text_data import load_texts, pack_blocks

    texts = load_texts(settings.data, limit=settings.data_limit, seed=settings.seed)
    blocks = pack_blocks(texts, AutoTokenizer.from_pretrained(settings.output), settings.block_size)[-8:]
    after, before = d.evaluate(trained, teacher, blocks), d.evaluate(untrained, teacher, blocks)
    assert after["kl"] < 0.95 * before["kl"]
    assert after["loss"] < before["loss"]
    assert after == pytest.approx(record["heldout_losses"], rel=1e-4)  # the saved checkpoint is the trained model

    assert record["settings"]["init"] == "random" and record["settings"]["layers"] == [0]
    assert record["settings"]["steps"] == 10 and record["removed"] == {"layers": [1]}
    assert record["params"] == sum(p.numel() for p in trained.parameters())
    assert record["size_bytes"] == (tmp_path / "student" / "model.safetensors").stat().st_size
    assert record["train_losses"]["step"] == 10
    assert not (tmp_path / "student" / d.CHECKPOINTS).exists()  # removed after a finished run


def test_keep_checkpoints_keeps_every_checkpoint_and_the_last_is_the_student(tiny_gpt2_dir, shipped_data, tmp_path):
    settings = settings_for(tiny_gpt2_dir, tmp_path / "student", shipped_data, preset="B", keep_checkpoints=True)
    d.distill(settings)  # 6 steps, a checkpoint every 2: the trainer's default limit (2) would drop checkpoint-2
    checkpoints = tmp_path / "student" / d.CHECKPOINTS
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    last, student, first = (_weights(checkpoints / "checkpoint-6"), _weights(tmp_path / "student"),
                            _weights(checkpoints / "checkpoint-2"))
    assert all(torch.equal(last[name], student[name]) for name in student)
    assert not all(torch.equal(first[name], student[name]) for name in student)  # trained on after step 2


class Crash(Exception):
    pass


class CrashAtStep(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Crash(f"simulated kill after step {self.step}")


def _weights(folder) -> dict:
    model = AutoModelForCausalLM.from_pretrained(folder)
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def test_a_run_killed_midway_resumes_to_the_uninterrupted_result(tiny_gpt2_dir, shipped_data, tmp_path):
    uninterrupted = settings_for(tiny_gpt2_dir, tmp_path / "straight", shipped_data, preset="B")
    d.distill(uninterrupted)

    resumed = settings_for(tiny_gpt2_dir, tmp_path / "resumed", shipped_data, preset="B")
    with pytest.raises(Crash):
        d.distill(resumed, callbacks=[CrashAtStep(5)])  # after checkpoint-4, before the end
    checkpoints = tmp_path / "resumed" / d.CHECKPOINTS
    assert d.last_complete_checkpoint(checkpoints).endswith("checkpoint-4")
    (checkpoints / "checkpoint-6").mkdir()  # a save the kill cut short: no trainer_state.json
    assert d.last_complete_checkpoint(checkpoints).endswith("checkpoint-4")

    with pytest.raises(d.DistillError, match="other settings \\(learning_rate\\)"):
        d.distill(settings_for(tiny_gpt2_dir, tmp_path / "resumed", shipped_data, preset="B", learning_rate=1e-3))
    record = d.distill(resumed)
    assert record["settings"]["steps"] == 6
    straight, again = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert straight.keys() == again.keys()
    for name in straight:
        assert torch.equal(straight[name], again[name]), name

    with pytest.raises(ValueError, match="already holds a compfair output"):
        d.distill(resumed)


def test_auto_run_drops_the_identity_blocks_and_records_the_influence(tiny_gpt2_dir, shipped_data, tmp_path):
    import json

    from transformers import AutoTokenizer

    from compressors.text_data import load_texts

    teacher_dir = tmp_path / "teacher"
    _with_identity_blocks(tiny_gpt2(n_layer=5, vocab=50257), [1, 3]).save_pretrained(teacher_dir)
    AutoTokenizer.from_pretrained(tiny_gpt2_dir).save_pretrained(teacher_dir)
    output = tmp_path / "student"
    code = d.main(["--teacher", str(teacher_dir), "--layers", "auto", "--num-layers", "3", "--calibration-texts", "12",
                   "--calibration-tokens", "20", "--data", str(shipped_data / "bold_wiki"), "--data-limit", "200",
                   "--block-size", "16", "--batch-size", "2", "--max-steps", "1", "--eval-blocks", "0",
                   "--output", str(output)])
    assert code == 0
    record = json.loads((output / "compfair_compression.json").read_text())
    assert record["settings"]["layers"] == [0, 2, 4] and record["removed"] == {"layers": [1, 3]}
    assert record["settings"]["layer_selection"] == "auto: highest block influence"
    texts = load_texts(str(shipped_data / "bold_wiki"), limit=200)
    batches = d.calibration_batches(texts, AutoTokenizer.from_pretrained(teacher_dir), 12, 20, seed=0)
    influence = record["block_influence"]
    assert influence["scores"] == pytest.approx(d.block_influence(d.load_teacher(str(teacher_dir)), batches), abs=1e-9)
    assert influence["scores"][1] == influence["scores"][3] == pytest.approx(0.0, abs=1e-12)
    assert influence["calibration_texts"] == 12
    assert influence["calibration_tokens"] == sum(int(b["attention_mask"].sum()) for b in batches) <= 12 * 20


# --------------------------------------------------------------------------- output folder (issue 12)

def _tree(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_teacher_folder_is_never_an_output_even_with_overwrite(tiny_gpt2_dir, shipped_data, tmp_path, capsys):
    before = _tree(tiny_gpt2_dir)
    for extra in ([], ["--overwrite"]):
        code = d.main(["--teacher", str(tiny_gpt2_dir), "--output", str(tiny_gpt2_dir), "--data",
                       str(shipped_data / "bold_wiki"), "--data-limit", "50", "--max-steps", "1", *extra])
        assert code == 2
        assert "is the source model folder" in capsys.readouterr().err
    assert _tree(tiny_gpt2_dir) == before


def test_a_model_compfair_did_not_write_is_never_replaced_and_a_compfair_output_only_with_overwrite(
        tiny_gpt2_dir, shipped_data, tmp_path, capsys):
    import json
    import shutil

    output = tmp_path / "other_model"
    shutil.copytree(tiny_gpt2_dir, output)  # some other model the user keeps there
    before = _tree(output)
    args = ["--teacher", str(tiny_gpt2_dir), "--output", str(output), "--data", str(shipped_data / "bold_wiki"),
            "--data-limit", "100", "--block-size", "16", "--batch-size", "2", "--max-steps", "1", "--eval-blocks", "0"]
    for extra in ([], ["--overwrite"]):
        assert d.main(args + extra) == 2
        assert "compfair did not write it" in capsys.readouterr().err
        assert _tree(output) == before
    output = tmp_path / "student"
    args[args.index("--output") + 1] = str(output)
    assert d.main(args) == 0
    assert d.main(args) == 2 and "already holds a compfair output" in capsys.readouterr().err
    stale = output / d.CHECKPOINTS
    stale.mkdir()
    (stale / d.SETTINGS_FILE).write_text("{}")  # an older compfair's settings file without a checkpoint
    assert d.main(args + ["--seed", "7"]) == 2
    assert d.main(args + ["--overwrite", "--seed", "7"]) == 0
    assert json.loads((output / "compfair_compression.json").read_text())["seed"] == 7
    assert not stale.exists()


def test_a_bad_input_stops_before_user_checkpoints_are_touched(tiny_gpt2_dir, tmp_path, capsys):
    """Issue 20: `distill --output proj --data /missing.txt` deleted proj/checkpoints/ and then failed on --data."""
    output = tmp_path / "proj"
    (output / d.CHECKPOINTS).mkdir(parents=True)
    (output / d.CHECKPOINTS / "my_run.pt").write_bytes(b"mine")
    for extra in ([], ["--overwrite"]):
        code = d.main(["--teacher", str(tiny_gpt2_dir), "--output", str(output), "--data",
                       str(tmp_path / "missing.txt"), *extra])
        assert code == 2
        assert "compfair did not write it" in capsys.readouterr().err
    (output / d.CHECKPOINTS / d.SETTINGS_FILE).write_text("{}")  # compfair's now (an older run's settings file)
    assert d.main(["--teacher", str(tiny_gpt2_dir), "--output", str(output), "--data",
                   str(tmp_path / "missing.txt"), "--overwrite"]) == 2
    assert "missing.txt" in capsys.readouterr().err
    assert (output / d.CHECKPOINTS / "my_run.pt").read_bytes() == b"mine"


def test_a_crash_while_the_student_is_saved_leaves_no_student_and_the_rerun_finishes(tiny_gpt2_dir, shipped_data,
                                                                                    tmp_path, monkeypatch):
    import compressors.metadata

    output = tmp_path / "student"
    settings = settings_for(tiny_gpt2_dir, output, shipped_data, preset="B")

    def crash(*args, **kwargs):
        raise Crash()

    with monkeypatch.context() as patched:
        patched.setattr(compressors.metadata, "write_compression_metadata", crash)
        with pytest.raises(Crash):
            d.distill(settings)
    assert not (output / "config.json").exists()  # the weights were saved beside, never under --output
    assert d.last_complete_checkpoint(output / d.CHECKPOINTS)  # the training is kept to resume
    assert d.distill(settings)["method"] == "distillation"
    assert (output / "config.json").is_file() and not (output / d.CHECKPOINTS).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]


@pytest.mark.parametrize("failure", ["too deep", "no text", "crash in step 1"])
def test_a_failed_start_leaves_no_settings_file_nor_folder(tiny_gpt2_dir, shipped_data, tmp_path, failure):
    output = tmp_path / "new" / "student"
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    settings = settings_for(tiny_gpt2_dir, output, shipped_data, num_layers=2 if failure == "too deep" else 1,
                            data=str(empty if failure == "no text" else shipped_data / "bold_wiki"))
    with pytest.raises((ValueError, Crash)):
        d.distill(settings, callbacks=[CrashAtStep(1)] if failure == "crash in step 1" else None)
    assert not output.exists()  # nor checkpoints/compfair_distill_settings.json inside it
    assert not output.exists() and sorted(p.name for p in tmp_path.iterdir()) in (["empty.txt"], ["empty.txt", "new"])


def test_a_second_run_to_an_output_being_trained_into_stops_and_leaves_its_checkpoints(tiny_gpt2_dir, shipped_data,
                                                                                      tmp_path):
    import fcntl

    output = tmp_path / "student"
    settings = settings_for(tiny_gpt2_dir, output, shipped_data, preset="B")
    with pytest.raises(Crash):
        d.distill(settings, callbacks=[CrashAtStep(3)])  # checkpoint-2 saved
    before = _tree(output)
    running = os.open(output, os.O_RDONLY)  # what a run training into it holds
    fcntl.flock(running, fcntl.LOCK_EX)
    try:
        with pytest.raises(ValueError, match="another compfair distill run is writing there"):
            d.distill(d.DistillSettings(**{**settings.__dict__, "overwrite": True}))
    finally:
        os.close(running)
    assert _tree(output) == before


def test_a_folder_with_user_files_is_refused_before_the_run_starts(tiny_gpt2_dir, shipped_data, tmp_path):
    output = tmp_path / "student"
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="compfair did not write it"):
        d.distill(settings_for(tiny_gpt2_dir, output, shipped_data, preset="B"), callbacks=[CrashAtStep(1)])
    assert _tree(output) == {"notes.txt": b"mine"}


# --------------------------------------------------------------------------- end to end (slow)

def _cli(args, **popen):
    env = {**os.environ, **OFFLINE_ENV, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "compfair_tasks.cli", "compress", "distill", *args], env=env,
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


@pytest.mark.slow
def test_cli_killed_with_sigkill_resumes_and_the_student_runs_in_lm_eval(tiny_gpt2_dir, shipped_data, tmp_path,
                                                                         lm_eval_cli):
    output = tmp_path / "student"
    args = ["--teacher", str(tiny_gpt2_dir), "--preset", "B", "--data", str(shipped_data / "bold_wiki"),
            "--data-limit", "300", "--block-size", "32", "--batch-size", "4", "--max-steps", "12",
            "--save-steps", "4", "--logging-steps", "4", "--seed", "5", "--output", str(output)]
    process = _cli(args)
    marker = output / d.CHECKPOINTS / "checkpoint-4" / "trainer_state.json"
    deadline = time.time() + 300
    while not marker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.kill()
    process.wait()
    assert marker.exists() and not (output / "compfair_compression.json").exists(), "not killed mid-run"

    finished = _cli(args)
    log = finished.communicate(timeout=600)[0]
    assert finished.returncode == 0, log
    assert "resuming from" in log and "checkpoint-" in log

    reference = settings_for(tiny_gpt2_dir, tmp_path / "reference", shipped_data, preset="B", max_steps=12,
                             save_steps=4, logging_steps=4, seed=5, learning_rate=5e-4, warmup=0.05, eval_blocks=16)
    d.distill(reference)
    straight, again = _weights(tmp_path / "reference"), _weights(output)
    assert all(torch.equal(straight[name], again[name]) for name in straight)

    results = lm_eval_cli(["--model", "hf", "--model_args", f"pretrained={output}", "--tasks", "compfair_stereoset",
                           "--limit", "8", "--batch_size", "8", "--device", "cpu"], tmp_path / "lm_eval")
    stereoset = results["results"]["compfair_stereoset"]
    from transformers import AutoTokenizer

    from known_answers import direct_metrics

    direct = direct_metrics("compfair_stereoset", AutoModelForCausalLM.from_pretrained(output),
                            AutoTokenizer.from_pretrained(output), {"pretrained": str(output)}, limit=8)
    assert (stereoset["ss,none"], stereoset["lms,none"]) == pytest.approx((direct["ss"], direct["lms"]))
