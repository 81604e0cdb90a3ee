import subprocess

from compfair_tasks import cli


def test_usage_lists_every_command(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    for words in cli.COMMANDS:
        assert " ".join(words) in out


def test_unknown_command_fails_with_usage(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "usage: compfair" in capsys.readouterr().err


def test_every_command_target_exists():
    import importlib

    for target, _ in cli.COMMANDS.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), target


def test_console_script_prints_the_data_sources():
    done = subprocess.run(["compfair", "data"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "stereoset" in done.stdout and "shipped:" in done.stdout
