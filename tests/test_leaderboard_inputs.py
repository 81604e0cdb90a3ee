"""The leaderboard's inputs (issue 20): relative checkpoint paths, malformed files, crafted weights, options."""

from __future__ import annotations

import json
import math
import os

import pytest

from leaderboard.cli import main
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
    from leaderboard.cli import build

    build([project / "out"], tmp_path / "site")
    html = (tmp_path / "site" / "index.html").read_text()
    assert "Teacher evaluated" in html and "NO: not among the results" in html


def test_a_checkpoint_path_that_is_not_found_is_not_shown_as_uncompressed(tmp_path, monkeypatch):
    write_run(tmp_path / "out", "./gone/student", {"wikitext": {"word_perplexity": 1.0}})
    monkeypatch.chdir(tmp_path)
    collection = collect([tmp_path / "out"])
    row = collection.frame.iloc[0]
    assert row["method"] != "none"
    assert any("./gone/student" in p and "not found" in p for p in collection.problems)


def test_a_crafted_pickle_beside_a_checkpoint_runs_nothing_and_does_not_stop_the_build(tmp_path):
    import pickle

    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    student = tmp_path / "student"
    write_compression(student, "sparsify_magnitude", "gpt2", 1, 1)
    (student / "pytorch_model.bin").write_bytes(pickle.dumps({"w": Payload()}))
    write_run(tmp_path / "out", str(student), {"wikitext": {"word_perplexity": 1.0}})
    collection = collect([tmp_path / "out"])
    row = collection.frame.iloc[0]
    assert row["method"] == "sparsify_magnitude" and math.isnan(row["bits"]) and not marker.exists()
    assert any(str(student) in p and "UnpicklingError" in p for p in collection.problems)


def test_a_results_file_whose_configs_is_a_list_is_read_without_them(tmp_path):
    results = write_run(tmp_path / "out", "gpt2", {"wikitext": {"word_perplexity": 7.0}})
    data = json.loads(results.read_text())
    data["configs"] = [data["configs"]]
    results.write_text(json.dumps(data))
    collection = collect([tmp_path / "out"])
    assert collection.frame.at[0, "wikitext:word_perplexity"] == 7.0
    assert any("'configs' is a list" in p for p in collection.problems)


@pytest.mark.parametrize("argv, match", [(["--seed", "-1"], "--seed"), (["--resamples", "0"], "--resamples"),
                                         (["--resamples", "99999999999"], "--resamples"),
                                         (["--threads", "0"], "--threads"), (["--lock-timeout", "-1"], "--lock"),
                                         (["--lock-timeout", "nan"], "--lock")])
def test_bad_options_stop_before_any_work_with_exit_2(tmp_path, argv, match, capsys):
    write_run(tmp_path / "out", "gpt2", {"wikitext": {"word_perplexity": 7.0}})
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "out"), "-o", str(tmp_path / "site"), *argv])
    assert stop.value.code == 2 and match in capsys.readouterr().err and not (tmp_path / "site").exists()


def test_no_results_and_a_missing_folder_exit_2_in_one_line(tmp_path, capsys):
    from compfair_tasks.cli import main as compfair

    (tmp_path / "empty").mkdir()
    assert compfair(["leaderboard", str(tmp_path / "empty"), "-o", str(tmp_path / "site")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no lm_eval results found" in err[0] and str(tmp_path / "empty") in err[0]
    with pytest.raises(SystemExit) as stop:
        compfair(["leaderboard", str(tmp_path / "missing"), "-o", str(tmp_path / "site")])
    assert stop.value.code == 2 and "does not exist" in capsys.readouterr().err


def test_resamples_are_never_raised_above_what_was_asked():
    from leaderboard.paired import resamples_for

    assert resamples_for(100, 10) == 100  # was silently 200
    assert resamples_for(2000, 8_000_000) == 200 and resamples_for(2000, 10_000) == 800


def _pair_with_student_samples(tmp_path, student_docs):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "config.json").write_text("{}")
    write_compression(tmp_path / "student", "prune", str(teacher), 1, 1)
    write_run(tmp_path / "out", str(teacher), {"compfair_crows_pairs": {"likelihood_diff": 1.0}},
              samples={"compfair_crows_pairs": [{"doc_id": i, "likelihood_diff": float(i)} for i in range(4)]})
    write_run(tmp_path / "out", str(tmp_path / "student"), {"compfair_crows_pairs": {"likelihood_diff": 1.0}},
              samples={"compfair_crows_pairs": student_docs})
    return next((tmp_path / "out").rglob("*student*/samples_*.jsonl"))


def test_samples_that_are_not_utf8_are_a_problem_not_a_crash(tmp_path):
    samples = _pair_with_student_samples(tmp_path, [{"doc_id": 0, "likelihood_diff": 1.0}])
    samples.write_bytes(b"\xff\xfe\x00\x01")
    collection = collect([tmp_path / "out"])
    assert paired_tests(collection).empty
    assert any(str(samples) in p and "cannot read samples" in p for p in collection.problems)


def test_repeated_doc_ids_and_unusable_values_are_left_out_and_said(tmp_path):
    docs = [{"doc_id": 0, "likelihood_diff": 9.0}, {"doc_id": 0, "likelihood_diff": 5.0},
            {"doc_id": 1, "likelihood_diff": float("nan")}, {"doc_id": 2, "likelihood_diff": "x"},
            {"doc_id": 3, "likelihood_diff": 7.0}, {"doc_id": [4], "likelihood_diff": 1.0}]
    samples = _pair_with_student_samples(tmp_path, docs)
    collection = collect([tmp_path / "out"])
    assert paired_tests(collection).empty  # doc 3 alone is left, and a paired test needs two
    problems = "\n".join(collection.problems)
    assert f"{samples}: 1 doc_id(s) logged more than once" in problems
    assert f"{samples}: per-doc values that are not finite numbers, left out of the paired tests: " \
           "likelihood_diff 2" in problems and f"{samples}: 1 malformed line(s) skipped" in problems
