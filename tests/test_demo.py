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
    rest = command[3 + len(words):]
    if words == ("study", "run"):
        return "study run", module.run_parser().parse_args(rest)
    if words == ("study", "report"):  # its parser lives in the command: run it with the report stubbed out
        from leaderboard.studies import report

        seen = {}
        monkeypatch.setattr(report, "build_report", lambda study_dir, output: seen.update(study_dir=study_dir,
                                                                                          output=output))
        module.report(rest)
        return "study report", argparse.Namespace(**seen)
    return " ".join(words), module.build_parser().parse_args(rest)


def test_quick_plan_parses_with_each_commands_parser(tmp_path, monkeypatch):
    profile = demo.PROFILES["quick"]
    steps = demo.plan(tmp_path, Path("/teacher"), profile)
    (tmp_path / "study" / "cells").mkdir(parents=True)  # the leaderboard's parser wants its folders to exist
    commands = [step.command for step in steps] + [command for _, command in demo.study_commands(tmp_path)]
    parsed = [parse_step(command, monkeypatch) for command in commands]
    assert [name for name, _ in parsed] == ["compress distill", "compress distill", "study run", "study report",
                                            "leaderboard"]
    student, untrained, study, report, render = [args for _, args in parsed]
    for args in (student, untrained):  # the same blocks dropped, the same data: the same student at step 0
        assert args.layers == "auto" and args.num_layers == 24 and str(args.data) == str(demo.TRAIN_TEXT)
    assert student.max_steps == 4 and student.save_steps == 2 and student.keep_checkpoints
    assert str(student.output) == str(tmp_path / "student") == str(steps[0].output)
    assert untrained.max_steps == 1 and untrained.learning_rate == demo.UNTRAINED_LR and not untrained.keep_checkpoints
    assert str(untrained.output) == str(tmp_path / "student" / "checkpoints" / "checkpoint-0") == str(steps[1].output)
    assert steps[1].inputs == (Path("/teacher"), steps[0].output)  # redone whenever the student is
    assert demo.TRAIN_TEXT.name == "race_wiki.json"  # never the gender biographies the perplexity task reads
    assert str(study.spec) == str(tmp_path / "study.yaml") and str(study.output) == str(tmp_path / "study")
    assert str(report.study_dir) == str(tmp_path / "study")
    assert [str(p) for p in render.folders] == [str(tmp_path / "study" / "cells")] and render.fluency_factor == 3


def _spec(tmp_path, profile, teacher):
    """The spec the demo writes, parsed and expanded by the study runner (checkpoint folders faked)."""
    from leaderboard.studies.plan import make_plan
    from leaderboard.studies.spec import parse

    for step in profile.steps:
        (tmp_path / "student" / "checkpoints" / f"checkpoint-{step}").mkdir(parents=True)
    path = tmp_path / "study.yaml"
    path.write_text(demo.study_spec(teacher, profile))
    spec = parse(path.read_text(), path)
    return spec, make_plan(spec, check=False)


@pytest.mark.parametrize("name", ["quick", "default"])
def test_the_shipped_spec_makes_the_demos_cells(tmp_path, name):
    profile = demo.PROFILES[name]
    spec, cells = _spec(tmp_path, profile, Path("/teacher"))
    assert spec.limit == profile.limit and spec.batch_size == 16 and spec.tasks == [
        "compfair_stereoset_intrasentence", "compfair_crows_pairs", "compfair_ppl_bold_wiki"]
    assert spec.metadata == {"scorer": "profanity-check", "fluency_model": "/teacher"}
    assert spec.control == {"reference": "teacher / noise", "quality": "perplexity"}
    student = [c for c in cells if c["series"] == "student"]
    assert [(c["axis"]["value"], c["compression"]["method"]) for c in student] == [
        (step, method) for step in profile.steps for method in ("none", "int8-per-token")]
    assert all(c["member"]["pretrained"] == str(tmp_path / "student" / "checkpoints" / f"checkpoint-{c['axis']['value']}")
               for c in student)
    text = [c for c in cells if c["series"] == "student-text"]
    assert [c["axis"]["value"] for c in text] == list(profile.steps)
    assert all(c["tasks"] == ["compfair_toxicity_rtp_offline"] and c["compression"]["method"] == "none" for c in text)
    teacher = [c for c in cells if c["series"] == "teacher"]
    assert {c["member"]["pretrained"] for c in teacher} == {"/teacher"}
    assert [c["compression"]["label"] for c in teacher] == ["none", *(f"magnitude-{s:g}" for s in profile.sparsity),
                                                          *(f"noise-{s:g}" for s in profile.noise)]


def test_another_limit_changes_every_cell_and_no_distillation(tmp_path):
    quick = demo.PROFILES["quick"]
    other = demo.Profile(**{**quick.__dict__, "limit": 7})
    assert [runner.settings(s)["key"] for s in demo.plan(tmp_path, Path("/t"), quick)] == [
        runner.settings(s)["key"] for s in demo.plan(tmp_path, Path("/t"), other)]
    assert demo.study_spec(Path("/t"), quick) != demo.study_spec(Path("/t"), other)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _, cells = _spec(tmp_path / "a", quick, Path("/t"))
    _, changed = _spec(tmp_path / "b", other, Path("/t"))
    assert {c["limit"] for c in cells} == {8} and {c["limit"] for c in changed} == {7}


@pytest.mark.parametrize("flag", ["--quick", "--rerun"])
def test_demo_flags_parse(flag, monkeypatch, tmp_path):
    seen, commands = {}, []
    monkeypatch.setattr(demo, "embedded_model_dir", lambda name: Path("/teacher"))
    monkeypatch.setattr(demo, "run_steps", lambda steps, **options: seen.update(options, n=len(steps)))
    monkeypatch.setattr(demo.subprocess, "run", lambda command: commands.append(command) or argparse.Namespace(returncode=0))
    assert demo.main([flag, "--output", str(tmp_path)]) == 0
    assert seen["rerun"] == (flag == "--rerun") and seen["n"] == 2
    assert [c[3:5] for c in commands] == [["study", "run"], ["study", "report"], ["leaderboard", str(tmp_path / "study" / "cells")]]
    assert "checkpoints" in (tmp_path / "study.yaml").read_text()


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
