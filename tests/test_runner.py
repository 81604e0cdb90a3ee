"""compfair_tasks.runner: a step is skipped only when its record holds the settings it would run with now."""

from __future__ import annotations

import json
import sys

import pytest

from compfair_tasks import runner

# a "tool" that writes its argv into OUTPUT/argv.json and counts its runs in a side file
TOOL = ("import json, pathlib, sys; out = pathlib.Path(sys.argv[1]); out.mkdir(); "
        "(out / 'argv.json').write_text(json.dumps(sys.argv[2:])); "
        "runs = pathlib.Path(sys.argv[1] + '.runs'); runs.write_text(str(int(runs.read_text() or 0) + 1) "
        "if runs.exists() else '1'); print('progress 50%\\rprogress 100%')")


def tool_step(tmp_path, *args, name="out", inputs=()):
    output = tmp_path / name
    return runner.Step(f"make {name}", [sys.executable, "-c", TOOL, str(output), *args], output, inputs=inputs)


def runs(step) -> int:
    counter = step.output.with_name(step.output.name + ".runs")
    return int(counter.read_text()) if counter.exists() else 0


def test_same_settings_skip_changed_settings_rerun(tmp_path, capsys):
    step = tool_step(tmp_path, "--limit", "10")
    runner.run_steps([step], prog="t")
    runner.run_steps([step], prog="t")
    assert runs(step) == 1 and "done already with the same settings, skipped" in capsys.readouterr().out

    changed = tool_step(tmp_path, "--limit", "50")
    runner.run_steps([changed], prog="t")
    out = capsys.readouterr().out
    assert runs(changed) == 2 and "made with other settings (argv: --limit 10 -> --limit 50)" in out
    assert json.loads((changed.output / "argv.json").read_text()) == ["--limit", "50"]  # old output replaced

    runner.run_steps([changed], prog="t", rerun=True)
    assert runs(changed) == 3


def test_a_step_whose_output_folder_does_not_exist_yet_runs(tmp_path):
    step = tool_step(tmp_path / "new" / "run")  # `compfair demo --output new/run` on a fresh machine
    runner.run_steps([step], prog="t")
    assert runs(step) == 1 and runner.record_path(step.output).exists()


def test_an_environment_change_reruns(tmp_path):
    step = tool_step(tmp_path)
    runner.run_steps([step], prog="t")
    step.env = {"COMPFAIR_DATA_DIR": str(tmp_path)}
    runner.run_steps([step], prog="t")
    assert runs(step) == 2


def test_new_code_reruns_a_step_and_says_what_changed(tmp_path, monkeypatch, capsys):
    step = tool_step(tmp_path)
    runner.run_steps([step], prog="t")
    assert json.loads(runner.record_path(step.output).read_text())["software"] == runner.software_versions()
    upgraded = {**runner.software_versions(), "compfair_commit": "0" * 40}
    monkeypatch.setattr(runner, "software_versions", lambda: upgraded)
    runner.run_steps([step], prog="t")
    assert runs(step) == 2 and "made with other settings (software: compfair_commit)" in capsys.readouterr().out


def test_refuse_names_rerun_and_keeps_the_old_output(tmp_path):
    runner.run_steps([tool_step(tmp_path, "--tasks", "a")], prog="compfair compare")
    refused = r"other settings \(argv: --tasks a -> --tasks a,b\); pass --rerun to replace"
    with pytest.raises(runner.SettingsChanged, match=refused):
        runner.run_steps([tool_step(tmp_path, "--tasks", "a,b")], prog="compfair compare", on_change="refuse")
    assert json.loads((tmp_path / "out" / "argv.json").read_text()) == ["--tasks", "a"]


def test_output_without_a_record_is_never_replaced_not_even_with_rerun(tmp_path):
    """Issue 20: an output compfair cannot prove it wrote was deleted (with no record it was "not trusted")."""
    step = tool_step(tmp_path)
    step.output.mkdir()  # a user's folder, or an older compfair's results
    (step.output / "notes.txt").write_text("mine")
    for kwargs in ({"on_change": "refuse"}, {}, {"rerun": True}):
        with pytest.raises(runner.SettingsChanged, match="has no record of its settings.*never replaces it"):
            runner.run_steps([step], prog="t", **kwargs)
    assert (step.output / "notes.txt").read_text() == "mine" and runs(step) == 0


def test_a_failed_rerun_keeps_the_previous_output(tmp_path):
    runner.run_steps([tool_step(tmp_path, "--limit", "10")], prog="t")
    before = runner.record_path(tmp_path / "out").read_text()
    failing = runner.Step("make out", [sys.executable, "-c", "import os, sys; os.mkdir(sys.argv[1]); sys.exit(3)",
                                       str(tmp_path / "out")], tmp_path / "out")
    with pytest.raises(runner.StepError, match="failed"):
        runner.run_steps([failing], prog="t")
    assert json.loads((tmp_path / "out" / "argv.json").read_text()) == ["--limit", "10"]
    assert runner.record_path(tmp_path / "out").read_text() == before
    assert not list(tmp_path.glob(".out*"))


def test_a_step_killed_midway_is_recognised_as_ours_and_the_old_output_comes_back(tmp_path):
    step = tool_step(tmp_path, "--limit", "10")
    runner.run_steps([step], prog="t")
    before = runner.record_path(step.output).read_text()
    # what a kill of the runner while redoing the step leaves: old output aside, a partial new one, "started"
    runner._move(step.output, runner._aside(step.output))
    step.output.mkdir()
    runner._write_record(step.output, {"title": "make out", "started": 0})
    runner.run_steps([step], prog="t")
    assert runs(step) == 1 and runner.record_path(step.output).read_text() == before
    step.output.joinpath("argv.json").unlink()
    runner._write_record(step.output, {"title": "make out", "started": 0})  # killed during its first run
    runner.run_steps([step], prog="t")
    assert runs(step) == 2 and json.loads((step.output / "argv.json").read_text()) == ["--limit", "10"]


def test_a_rerun_input_reruns_the_steps_that_read_it(tmp_path):
    first = tool_step(tmp_path, name="model")
    second = tool_step(tmp_path, name="results", inputs=(first.output,))
    runner.run_steps([first, second], prog="t")
    runner.run_steps([first, second], prog="t")
    assert (runs(first), runs(second)) == (1, 1)
    changed_first = tool_step(tmp_path, "--steps", "40", name="model")
    runner.run_steps([changed_first, second], prog="t")
    assert (runs(changed_first), runs(second)) == (2, 2)


def test_progress_reaches_the_terminal_and_the_log(tmp_path, capfd):
    step = tool_step(tmp_path)
    runner.run_steps([step], prog="t")
    assert "progress 50%\rprogress 100%" in capfd.readouterr().out
    assert b"progress 50%\rprogress 100%" in runner.log_path(step.output).read_bytes()


def test_a_failure_stops_the_run_and_records_nothing(tmp_path):
    fails = runner.Step("fails", [sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "never")
    after = tool_step(tmp_path)
    with pytest.raises(runner.StepError, match=r"step 'fails' failed \(exit 3\); see .*never.log"):
        runner.run_steps([fails, after], prog="t")
    assert not runner.record_path(fails.output).exists() and runs(after) == 0


def test_one_lm_eval_spelling():
    command = runner.lm_eval_command(model="hf", model_args="pretrained=m", tasks=["a", "b"], output_path="o",
                                     limit=5, metadata={"scorer": "x"}, seed=0)
    assert command[1:4] == ["-m", "lm_eval", "run"]
    assert command[command.index("--tasks") + 1] == "a,b" and command[command.index("--limit") + 1] == "5"
