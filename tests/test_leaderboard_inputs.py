"""The leaderboard's inputs (issue 20): relative checkpoint paths, malformed files, crafted weights, options."""

from __future__ import annotations

from leaderboard.collect import collect
from leaderboard.paired import paired_tests
from leaderboard_results import write_compression, write_run


def _relative_project(tmp_path):
    """proj/teacher and proj/student (compressed from "teacher", recorded relative), evaluated from proj/ into
    proj/out with relative pretrained= paths, as `cd proj && lm_eval ... pretrained=student` writes them."""
    project = tmp_path / "proj"
    (project / "teacher").mkdir(parents=True)
    (project / "teacher" / "config.json").write_text("{}")
    write_compression(project / "student", "prune", "teacher", 90, 1024, ratio=0.05)
    docs = {"teacher": [{"doc_id": i, "likelihood_diff": 1.0} for i in range(4)],
            "student": [{"doc_id": i, "likelihood_diff": 3.0} for i in range(4)]}
    for name, rows in docs.items():
        write_run(project / "out", name, {"compfair_crows_pairs": {"likelihood_diff": rows[0]["likelihood_diff"]}},
                  samples={"compfair_crows_pairs": rows})
    return project


def test_relative_pretrained_paths_resolve_against_the_runs_own_folder(tmp_path, monkeypatch):
    project = _relative_project(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the leaderboard runs from another folder
    collection = collect([project / "out"])
    frame = collection.frame.set_index("model")
    assert frame.at["student", "method"] == "prune" and frame.at["teacher", "method"] == "none"
    assert frame.at["student", "teacher"] == "teacher" and frame.at["student", "teacher_evaluated"] == "yes"
    rows = paired_tests(collection)
    assert rows["effect"].tolist() == [2.0] and rows["baseline"].tolist() == ["teacher"]


def test_a_teacher_that_is_not_among_the_results_is_said_so(tmp_path, monkeypatch):
    project = _relative_project(tmp_path)
    for path in (project / "out").glob("teacher/*"):
        path.unlink()
    monkeypatch.chdir(tmp_path)
    collection = collect([project / "out"])
    frame = collection.frame.set_index("model")
    assert frame.at["student", "teacher"] == "teacher"
    assert frame.at["student", "teacher_evaluated"].startswith("NO")
    assert any("student" in p and "teacher" in p and "no paired test" in p for p in collection.problems)


def test_a_checkpoint_path_that_is_not_found_is_not_shown_as_uncompressed(tmp_path, monkeypatch):
    write_run(tmp_path / "out", "./gone/student", {"wikitext": {"word_perplexity": 1.0}})
    monkeypatch.chdir(tmp_path)
    collection = collect([tmp_path / "out"])
    row = collection.frame.iloc[0]
    assert row["method"] != "none"
    assert any("./gone/student" in p and "not found" in p for p in collection.problems)
