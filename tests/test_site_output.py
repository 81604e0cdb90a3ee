"""leaderboard/sitedir.py: a build replaces only a site compfair wrote, never its own inputs (issue 20)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from leaderboard import sitedir
from leaderboard.cli import main as leaderboard_main
from leaderboard_results import write_run


def _digest(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _results(folder: Path) -> Path:
    write_run(folder, "gpt2", {"compfair_crows_pairs": {"pct_stereotype": 55.0}}, params=10)
    return folder


@pytest.mark.parametrize("layout", ["output_contains_input", "output_is_input", "output_inside_input"])
def test_an_output_overlapping_an_input_folder_is_refused(tmp_path, layout, capsys):
    """Issue 20: `compfair leaderboard site/results -o site` deleted the results it had read and NOTES.md."""
    site = tmp_path / "site"
    assert leaderboard_main([str(_results(tmp_path / "first")), "-o", str(site)]) == 0  # a compfair site
    results = _results(site / "results")  # then the user keeps results and notes in it
    (site / "NOTES.md").write_text("mine")
    inputs, output = {"output_contains_input": (results, site), "output_is_input": (results, results),
                      "output_inside_input": (site, site / "web")}[layout]
    before = _digest(tmp_path)
    assert leaderboard_main([str(inputs), "-o", str(output)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "input folder" in err[0] and "-o" in err[0], err
    assert _digest(tmp_path) == before


def test_a_folder_that_looks_like_a_site_but_has_no_marker_is_refused(tmp_path, capsys):
    """Issue 20: any folder holding index.html and leaderboard.csv was taken for an old site and emptied."""
    results = _results(tmp_path / "res")
    web = tmp_path / "lb_web"
    (web / "assets").mkdir(parents=True)
    for name in ("index.html", "leaderboard.csv", "thesis.tex", "assets/style.css"):
        (web / name).write_text(name)
    before = _digest(web)
    assert leaderboard_main([str(results), "-o", str(web)]) == 2
    assert "not a compfair site" in capsys.readouterr().err
    assert _digest(web) == before


def test_a_site_is_rebuilt_but_a_file_the_user_added_to_it_stops_the_rebuild(tmp_path, capsys):
    results = _results(tmp_path / "res")
    site = tmp_path / "site"
    assert leaderboard_main([str(results), "-o", str(site)]) == 0
    marker = json.loads((site / sitedir.MARKER).read_text())
    assert marker["id"] and "index.html" in marker["files"] and "leaderboard.csv" in marker["files"]
    assert leaderboard_main([str(results), "-o", str(site)]) == 0  # our own site: replaced
    assert json.loads((site / sitedir.MARKER).read_text())["id"] != marker["id"]
    (site / "NOTES.md").write_text("mine")
    before = _digest(site)
    assert leaderboard_main([str(results), "-o", str(site)]) == 2
    assert "NOTES.md" in capsys.readouterr().err
    assert _digest(site) == before


def test_a_site_of_an_older_compfair_is_replaced_only_when_it_holds_nothing_else(tmp_path, capsys):
    """Migration: an older marker holds no file list; the names a build writes stand in for it."""
    results = _results(tmp_path / "res")
    site = tmp_path / "site"
    site.mkdir()
    (site / sitedir.MARKER).write_text("written by compfair leaderboard; the folder is replaced on rebuild\n")
    for name in ("index.html", "leaderboard.csv", "leaderboard.md", "plot.png"):
        (site / name).write_text("old")
    (site / "thesis.tex").write_text("mine")
    assert leaderboard_main([str(results), "-o", str(site)]) == 2
    assert "thesis.tex" in capsys.readouterr().err and (site / "thesis.tex").read_text() == "mine"
    (site / "thesis.tex").unlink()
    assert leaderboard_main([str(results), "-o", str(site)]) == 0
    assert (site / "index.html").read_text() != "old"


def test_a_file_added_while_the_site_is_built_is_not_swapped_out(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    with pytest.raises(sitedir.SiteError, match="not a compfair site"), sitedir.publish(site) as staged:
        (staged / "index.html").write_text("new")
        (site / "NOTES.md").write_text("mine")
    assert _digest(site) == {"NOTES.md": hashlib.sha256(b"mine").hexdigest()}
