"""The demo's plan: every step's argv parses with its own command's parser, so a renamed flag fails here."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import pytest

from compfair_tasks import cli, demo, runner


@pytest.fixture(autouse=True)
def exact_flags(monkeypatch):
    """argparse accepts a prefix of a flag by default, so `--eval-blocks` would still parse after a rename to
    `--eval-blocks-n`: every parser built in these tests takes whole flags only."""
    init = argparse.ArgumentParser.__init__
    monkeypatch.setattr(argparse.ArgumentParser, "__init__",
                        lambda self, *args, **kwargs: init(self, *args, **{**kwargs, "allow_abbrev": False}))


def parse_step(command: list[str], monkeypatch):
    """The namespace the step's own command would parse from its argv (argparse exits 2 on a drifted flag)."""
    assert command[0] == sys.executable and command[1] == "-m"
    if command[2] == "lm_eval":
        from lm_eval._cli import HarnessCLI  # lm_eval's own parser, fed through sys.argv as its main() does

        monkeypatch.setattr(sys, "argv", ["lm-eval", *command[3:]])
        return "lm_eval", HarnessCLI().parse_args()
    assert command[2] == "compfair_tasks.cli"
    words = next(w for w in sorted(cli.COMMANDS, key=len, reverse=True) if tuple(command[3:3 + len(w)]) == w)
    module = importlib.import_module(cli.COMMANDS[words][0].split(":")[0])
    return " ".join(words), module.build_parser().parse_args(command[3 + len(words):])


def test_quick_plan_parses_with_each_commands_parser(tmp_path, monkeypatch):
    steps = demo.plan(tmp_path, Path("/teacher"), demo.PROFILES["quick"], second_model=None)
    for step in steps[3:7]:  # the leaderboard's parser refuses input folders that do not exist yet
        step.output.mkdir(parents=True)
    parsed = [parse_step(step.command, monkeypatch) for step in steps]
    assert [(step.title, name) for step, (name, _) in zip(steps, parsed, strict=True)] == [
        ("distil a student without its lowest-influence blocks", "compress distill"),
        ("prune attention heads", "compress prune"),
        ("quantize the weights to 4 bits (GPTQ, llm-compressor)", "compress quantize"),
        ("evaluate teacher", "lm_eval"), ("evaluate distilled", "lm_eval"), ("evaluate head-pruned", "lm_eval"),
        ("evaluate gptq-4bit", "lm_eval"), ("render the leaderboard", "leaderboard")]
    distill, prune, quantize, *evaluations, render = [args for _, args in parsed]
    assert distill.layers == "auto" and distill.num_layers == 26 and distill.max_steps == 4
    assert str(distill.output) == str(tmp_path / "models" / "distilled")
    assert prune.num_examples == 32 and prune.iterations == 1
    assert quantize.method == "gptq" and quantize.bits == 4 and str(quantize.output) == str(steps[2].output)
    # never the gender biographies the perplexity task reads (prune takes several sources)
    assert [str(distill.data), str(quantize.data)] == [str(demo.TRAIN_TEXT)] * 2 and prune.data == [str(demo.TRAIN_TEXT)]
    assert demo.TRAIN_TEXT.name == "race_wiki.json"
    for step, args in zip(steps[3:7], evaluations, strict=True):
        assert args.command == "run" and args.model == "hf" and args.limit == 8 and args.log_samples
        assert args.model_args["pretrained"] == str(step.inputs[0])
        assert str(args.output_path) == str(step.output)
        assert args.metadata == {**demo.EVAL_METADATA, "fluency_model": "/teacher", "bold_per_group": 1}
        assert "compfair_bold" in args.tasks
    assert [Path(p) for p in render.folders] == [s.output for s in steps[3:7]]


def test_full_plan_adds_the_sparse_and_the_second_model(tmp_path, monkeypatch):
    steps = demo.plan(tmp_path, Path("/teacher"), demo.PROFILES["default"], second_model=Path("/gemma"))
    assert [s.title for s in steps[3:4]] == ["sparsify to 50% (Wanda)"]
    _, sparsify = parse_step(steps[3].command, monkeypatch)
    assert sparsify.method == "wanda" and sparsify.sparsity == 0.5
    assert [s.title for s in steps[-3:]] == ["evaluate wanda-50", "evaluate gemma3-270m", "render the leaderboard"]
    _, gemma = parse_step(steps[-2].command, monkeypatch)
    assert gemma.limit == 40 and gemma.model_args["pretrained"] == "/gemma"
    assert gemma.metadata["bold_per_group"] == 2 and gemma.metadata["fluency_model"] == "/teacher"


def test_another_profile_changes_the_settings_of_every_step_it_affects(tmp_path):
    quick = demo.plan(tmp_path, Path("/teacher"), demo.PROFILES["quick"], None)
    other_limit = demo.plan(tmp_path, Path("/teacher"), demo.Profile(**{**demo.PROFILES["quick"].__dict__, "limit": 7}),
                            None)
    changed = [a.title for a, b in zip(quick, other_limit, strict=True)
               if runner.settings(a)["key"] != runner.settings(b)["key"]]
    # the render step reads the evaluations' records: it reruns once they have, through its inputs
    assert changed == ["evaluate teacher", "evaluate distilled", "evaluate head-pruned", "evaluate gptq-4bit"]


@pytest.mark.parametrize("flag", ["--quick", "--rerun"])
def test_demo_flags_parse(flag, monkeypatch):
    seen = {}
    monkeypatch.setattr(demo, "embedded_model_dir", lambda name: Path("/teacher"))
    monkeypatch.setattr(demo, "run_steps", lambda steps, **options: seen.update(options, n=len(steps)))
    assert demo.main([flag, "--output", "/tmp/x"]) == 0
    assert seen["rerun"] == (flag == "--rerun")


def test_compare_commands_parse_with_lm_evals_parser(tmp_path, monkeypatch):
    from leaderboard import compare

    args = compare.build_parser().parse_args(["blenderbot", "--output", str(tmp_path), "--limit", "5"])
    args.device = "cpu"
    preset = compare.PRESETS["blenderbot"]
    for model in preset.models:
        _, parsed = parse_step(compare.lm_eval_command(model, preset, args), monkeypatch)
        assert parsed.model_args["pretrained"] == model.name and parsed.model_args["backend"] == "seq2seq"
        assert parsed.limit == 5 and parsed.gen_kwargs == {"max_length": 21} and parsed.log_samples


@pytest.mark.slow
def test_a_real_lm_eval_step_runs_once_per_settings(tiny_gpt2_dir, tmp_path, capfd):
    def step(limit):
        command = runner.lm_eval_command(model="hf", model_args=f"pretrained={tiny_gpt2_dir}",
                                         tasks=["compfair_crows_pairs"], output_path=tmp_path / "results",
                                         limit=limit, batch_size=4, device="cpu", seed=0)
        return runner.Step("evaluate", command, tmp_path / "results", env={"OMP_NUM_THREADS": "1"},
                           inputs=(tiny_gpt2_dir,))

    runner.run_steps([step(2)], prog="t")
    assert len(list((tmp_path / "results").rglob("results_*.json"))) == 1
    assert "Running loglikelihood requests" in runner.log_path(tmp_path / "results").read_text()
    runner.run_steps([step(2)], prog="t")
    assert "skipped" in capfd.readouterr().out
    runner.run_steps([step(3)], prog="t")  # the old results are replaced, not mixed with the new
    [results] = (tmp_path / "results").rglob("results_*.json")
    assert '"limit": 3' in results.read_text()
