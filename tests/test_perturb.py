"""compfair compress perturb: seeded Gaussian weight noise, the quality-matched control's reference series."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from compfair_tasks import cli
from compressors import perturb


def _tiny(seed=0):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=64)).eval()


def test_the_noise_std_relative_to_each_tensor_is_the_scale_and_one_dimensional_tensors_stay():
    model = _tiny()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    measured = perturb.perturb_model(model, 0.05, seed=3)
    assert set(measured) == {n for n, p in before.items() if p.dim() >= 2}
    for name, weight in model.named_parameters():
        if weight.dim() < 2:
            assert torch.equal(weight, before[name]), name
            continue
        ratio = float((weight.detach() - before[name]).std() / before[name].std())
        assert ratio == pytest.approx(measured[name], rel=1e-4)
        # sampling error of a std over n draws ~ 1/sqrt(2n); the smallest tensor has 64*32 entries
        assert ratio == pytest.approx(0.05, rel=0.1), name


def test_the_same_seed_gives_the_same_weights_and_another_seed_others():
    a, b, c = _tiny(), _tiny(), _tiny()
    perturb.perturb_model(a, 0.1, seed=7)
    perturb.perturb_model(b, 0.1, seed=7)
    perturb.perturb_model(c, 0.1, seed=8)
    weights = [dict(m.named_parameters())["transformer.h.0.attn.c_attn.weight"] for m in (a, b, c)]
    assert torch.equal(weights[0], weights[1])
    assert not torch.equal(weights[0], weights[2])


def test_quality_degrades_monotonically_with_the_scale():
    """A tiny GPT-2 trained to continue a cycle 0 1 2 ... 15: more noise, higher loss (the known direction)."""
    model = _tiny().train()
    cycle = torch.arange(48).remainder(16).unsqueeze(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        optimizer.zero_grad()
        model(cycle, labels=cycle).loss.backward()
        optimizer.step()
    model.eval()
    losses = []
    for scale in (None, 0.2, 0.5, 1.0, 2.0):  # below ~0.1 the change is within noise either way
        copy = _tiny()
        copy.load_state_dict(model.state_dict())
        if scale:
            perturb.perturb_model(copy, scale, seed=0)
        with torch.no_grad():
            losses.append(float(copy(cycle, labels=cycle).loss))
    assert losses[0] < 0.1
    assert losses == sorted(losses) and len(set(losses)) == len(losses), losses


def test_cli_writes_a_checked_checkpoint_that_differs_from_its_source(tiny_gpt2_dir, tmp_path, capsys):
    output = tmp_path / "noisy"
    assert cli.main(["compress", "perturb", "--model", str(tiny_gpt2_dir), "--output", str(output),
                     "--scale", "0.02", "--seed", "5"]) == 0
    record = json.loads((output / "compfair_compression.json").read_text())
    assert record["method"] == "noise" and record["seed"] == 5
    assert record["settings"]["scale"] == 0.02 and record["settings"]["seed"] == 5
    assert record["measured"]["relative_noise_std_mean"] == pytest.approx(0.02, rel=0.05)
    assert 0 < record["checks"]["reference_diff"] <= perturb.REFERENCE_TOL
    source = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    noisy = AutoModelForCausalLM.from_pretrained(output)
    assert sum(p.numel() for p in noisy.parameters()) == sum(p.numel() for p in source.parameters())
    expected = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    perturb.perturb_model(expected, 0.02, seed=5)
    for (name, got), want in zip(noisy.state_dict().items(), expected.state_dict().values()):
        assert torch.equal(got, want), name
    # bad input: one line, exit 2; the source folder is never the output
    with pytest.raises(SystemExit) as exited:  # argparse: exit 2 at parse time, before any model loads
        cli.main(["compress", "perturb", "--model", str(tiny_gpt2_dir), "--output", str(tmp_path / "x"),
                  "--scale", "0"])
    assert exited.value.code == 2 and "--scale: 0 is out of range" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert cli.main(["compress", "perturb", "--model", str(tiny_gpt2_dir), "--output", str(tiny_gpt2_dir),
                     "--scale", "0.1", "--overwrite"]) == 2
