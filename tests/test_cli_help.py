"""Every subcommand's --help shows its defaults, and every option says what it does (issue 12, section 6)."""

from __future__ import annotations

import argparse

import pytest

from compfair_tasks import cli

OWNED_ELSEWHERE = {("demo",), ("compare",)}  # demo.py / compare.py: formatter added when merged (see report)


class _Captured(Exception):
    pass


def _parser_of(words, monkeypatch) -> argparse.ArgumentParser:
    """The parser a subcommand builds, caught when it parses its arguments."""
    seen = {}

    def capture(self, args=None, namespace=None):
        seen["parser"] = self
        raise _Captured

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(_Captured):
        cli.main([*words, "--help"])
    return seen["parser"]


@pytest.mark.parametrize("words", [pytest.param(w, marks=pytest.mark.xfail(strict=True, reason="owned by h6"))
                                   if w in OWNED_ELSEWHERE else w for w in cli.COMMANDS], ids=" ".join)
def test_every_subcommand_shows_defaults_and_documents_every_option(words, monkeypatch):
    parser = _parser_of(words, monkeypatch)
    assert issubclass(parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter), words
    undocumented = [action.dest for action in parser._actions if not (action.help or "").strip()]
    assert not undocumented, f"compfair {' '.join(words)}: options without help text: {undocumented}"


def test_prune_shows_progress_inside_each_iteration(tiny_gpt2_dir, tmp_path, capsys):
    code = cli.main(["compress", "prune", "--model", str(tiny_gpt2_dir), "--output", str(tmp_path / "out"),
                     "--num-examples", "16", "--block-size", "16", "--min-blocks", "1", "--batch-size", "1",
                     "--iterations", "2", "--ratio", "0.25"])
    assert code == 0
    err = capsys.readouterr().err
    assert "iteration 1/2: scoring" in err and "iteration 2/2: scoring" in err
    assert "batch" in err
