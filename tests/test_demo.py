import sys
from pathlib import Path

from compfair_tasks import cli, demo


def test_quick_plan_compresses_evaluates_and_renders(tmp_path):
    steps = demo.plan(tmp_path, Path("/teacher"), demo.PROFILES["quick"], second_model=None)
    titles = [s.title for s in steps]
    assert titles == ["distil a half-depth student", "prune attention heads", "quantize to int8",
                      "evaluate teacher", "evaluate distilled", "evaluate head-pruned", "evaluate int8",
                      "render the leaderboard"]
    for step in steps:
        if step.command[1:3] == ["-m", "compfair_tasks.cli"]:
            words = tuple(w for w in step.command[3:5] if not w.startswith("-"))
            assert any(words[: len(k)] == k for k in cli.COMMANDS), step.command
    int8_eval = steps[6].command
    assert int8_eval[int8_eval.index("--model") + 1] == "compfair-quantized"
    assert int8_eval[int8_eval.index("--limit") + 1] == "10"


def test_full_plan_adds_the_second_model(tmp_path):
    steps = demo.plan(tmp_path, Path("/teacher"), demo.PROFILES["default"], second_model=Path("/gemma"))
    titles = [s.title for s in steps]
    assert titles[-3:] == ["evaluate int8", "evaluate gemma3-270m", "render the leaderboard"]
    assert "--limit" in steps[3].command and steps[3].command[steps[3].command.index("--limit") + 1] == "50"


def test_finished_steps_are_skipped_and_a_failure_stops_the_run(tmp_path, capsys):
    done_marker = tmp_path / "done.json"
    done_marker.write_text("{}")
    ran = tmp_path / "ran"
    steps = [
        demo.Step("already done", [sys.executable, "-c", "raise SystemExit(1)"], done_marker),
        demo.Step("runs", [sys.executable, "-c", f"open({str(ran)!r}, 'w')"], tmp_path / "out" / ".done"),
        demo.Step("fails", [sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "never"),
    ]
    (tmp_path / "out").mkdir()
    try:
        demo.run(steps, started=0.0)
    except SystemExit as stop:
        assert "step 'fails' failed (exit 3)" in str(stop)
    else:
        raise AssertionError("a failing step must stop the demo")
    assert ran.exists() and (tmp_path / "out" / ".done").exists()
    assert "already done: done already, skipped" in capsys.readouterr().out
