"""Leaderboard: collecting lm_eval output folders, paired tests, and the written site (CSV, Markdown, HTML, PNG)."""

from __future__ import annotations

import json
import math
import re

import pandas as pd
import pytest

from leaderboard import columns
from leaderboard.cli import main as leaderboard_main
from leaderboard.collect import LATENCY_FILE, collect, parse_model_args, task_metrics
from leaderboard.paired import compare_runs, paired_tests, per_doc_value
from leaderboard.render import format_value, write_site
from leaderboard_results import write_compression, write_run


def test_task_metrics_drop_the_filter_and_non_numbers():
    entry = {"alias": "x", "name": "x", "sample_len": 3, "ss,none": 61.0, "ss_stderr,none": "N/A",
             "emt,scored": 0.25, "acc,none": 0.5, "acc,strict": 0.4}
    assert task_metrics(entry) == {"ss": 61.0, "emt": 0.25, "acc[none]": 0.5, "acc[strict]": 0.4}


def test_model_args_as_dict_or_cli_string():
    assert parse_model_args({"pretrained": "gpt2"}) == {"pretrained": "gpt2"}
    assert parse_model_args("pretrained=/m/a,dtype=float32") == {"pretrained": "/m/a", "dtype": "float32"}


def test_runs_of_one_model_merge_newest_task_wins_and_bad_files_are_named(tmp_path):
    out = tmp_path / "out"
    write_run(out, "gpt2", {"compfair_crows_pairs": {"pct_stereotype": 60.0}}, stamp="2026-01-01T00-00-00")
    write_run(out, "gpt2", {"compfair_crows_pairs": {"pct_stereotype": 55.0},
                            "wikitext": {"word_perplexity": 37.4}}, stamp="2026-01-02T00-00-00")
    write_run(out, "distilgpt2", {"wikitext": {"word_perplexity": 46.1}}, params=81_912_576)
    broken = out / "broken" / "results_2026-01-03T00-00-00.json"
    broken.parent.mkdir()
    broken.write_text('{"results": {"wikitext": ')
    partial = out / "partial" / "results_2026-01-03T00-00-00.json"
    partial.parent.mkdir()
    partial.write_text(json.dumps({"config": {"model_args": "pretrained=x"}}))

    collection = collect([out, tmp_path / "missing"])
    frame = collection.frame.set_index("model")
    assert sorted(frame.index) == ["distilgpt2", "gpt2"]
    assert frame.at["gpt2", "compfair_crows_pairs:pct_stereotype"] == 55.0  # the newer run
    assert frame.at["gpt2", "wikitext:word_perplexity"] == 37.4
    assert math.isnan(frame.at["distilgpt2", "compfair_crows_pairs:pct_stereotype"])  # not evaluated: blank
    assert frame.at["distilgpt2", "params"] == 81_912_576
    problems = "\n".join(collection.problems)
    assert str(broken) in problems and str(partial) in problems and str(tmp_path / "missing") in problems


def test_compression_metadata_teacher_size_and_latency(tmp_path):
    teacher = tmp_path / "ckpt" / "teacher"
    teacher.mkdir(parents=True)
    (teacher / "model.safetensors").write_bytes(b"\0" * 2048)
    (teacher / LATENCY_FILE).write_text(json.dumps({"latency_ms": 12.5}))
    student = tmp_path / "ckpt" / "student"
    write_compression(student, "prune", str(teacher), 90, 1024, ratio=0.05, iterations=3)
    write_run(tmp_path / "out", str(teacher), {"wikitext": {"word_perplexity": 30.0}}, params=100)
    write_run(tmp_path / "out", str(student), {"wikitext": {"word_perplexity": 33.0}}, params=90,
              model_args=f"pretrained={student},dtype=float32")

    frame = collect([tmp_path / "out"]).frame.set_index("model")
    assert frame.at["student", "method"] == "prune"
    assert frame.at["student", "recipe"] == "ratio=0.05, iterations=3"
    assert frame.at["student", "teacher"] == "teacher"
    assert frame.at["student", "size_bytes"] == 1024  # from compfair_compression.json
    assert frame.at["teacher", "size_bytes"] == 2048  # weight files in the checkpoint folder
    assert frame.at["teacher", "latency_ms"] == 12.5 and math.isnan(frame.at["student", "latency_ms"])
    assert frame.at["teacher", "method"] == "none"


def test_same_folder_names_are_told_apart(tmp_path):
    for parent in ("a", "b"):
        (tmp_path / parent / "student").mkdir(parents=True)
        write_run(tmp_path / "out", str(tmp_path / parent / "student"), {"wikitext": {"word_perplexity": 1.0}})
    assert sorted(collect([tmp_path / "out"]).frame["model"]) == ["a/student", "b/student"]


def test_per_doc_values():
    assert per_doc_value(100.0, "pct_stereotype") == 100.0
    assert per_doc_value(True, "acc") == 1.0
    assert per_doc_value([-30.0, 10], "word_perplexity") == 3.0  # negative log-likelihood per word
    record = {"id": "a", "target": "t", "stereotype": -2.0, "anti": -3.0, "unrelated": -2.5}
    assert per_doc_value(record, "ss") == 100.0 and per_doc_value(record, "ss_gender") == 100.0
    assert per_doc_value(record, "lms") == 50.0  # stereotype beats unrelated, anti does not
    assert per_doc_value({**record, "anti": -2.0}, "ss") == 0.0  # a tie counts as anti-stereotype
    assert per_doc_value(record, "icat") is None
    assert per_doc_value({"pro": 1.0, "anti": 2.0}, "anti_pct_balanced") is None


def _pair_runs(tmp_path, teacher_docs, student_docs, student_hash_offset=0):
    teacher = tmp_path / "ckpt" / "teacher"
    teacher.mkdir(parents=True)
    student = tmp_path / "ckpt" / "student"
    write_compression(student, "distill", str(teacher), 50, 100)
    write_run(tmp_path / "out", str(teacher), {"compfair_crows_pairs": {"likelihood_diff": 1.0}},
              {"compfair_crows_pairs": teacher_docs})
    write_run(tmp_path / "out", str(student), {"compfair_crows_pairs": {"likelihood_diff": 1.0}},
              {"compfair_crows_pairs": student_docs})
    return collect([tmp_path / "out"])


def test_student_is_tested_against_its_teacher_matching_doc_ids(tmp_path):
    teacher_docs = [{"doc_id": i, "likelihood_diff": float(i), "pct_stereotype": 100.0 * (i % 2)} for i in range(4)]
    student_docs = [{"doc_id": i, "likelihood_diff": float(i) + 1.0, "pct_stereotype": 100.0 * (i % 2)}
                    for i in reversed(range(4))]  # other order: pairs come from doc_id, not position
    collection = _pair_runs(tmp_path, teacher_docs, student_docs)
    result = paired_tests(collection, test="permutation", n_resamples=4000).set_index("metric")
    row = result.loc["likelihood_diff"]
    assert (row["baseline"], row["model"], row["relation"], row["n"]) == ("teacher", "student", "teacher→student", 4)
    assert row["effect"] == pytest.approx(1.0) and row["model_mean"] == pytest.approx(2.5)
    # every difference is +1: only the 2 all-same-sign flips of 2^4 reach |mean| >= 1, p = 1/8
    assert row["p_value"] == pytest.approx(0.125, abs=0.02)
    assert result.loc["pct_stereotype", "effect"] == 0.0


def test_docs_with_other_text_are_not_paired(tmp_path):
    teacher_docs = [{"doc_id": i, "likelihood_diff": 1.0} for i in range(5)]
    student_docs = [{"doc_id": i, "likelihood_diff": 2.0, **({"text": "other"} if i == 0 else {})} for i in range(5)]
    collection = _pair_runs(tmp_path, teacher_docs, student_docs)
    rows = paired_tests(collection)
    assert rows["n"].tolist() == [4]
    assert any("1 doc(s) differ" in p for p in collection.problems)


def test_explicit_pair_and_bootstrap_ci(tmp_path):
    for name, shift in (("gpt2", 0.0), ("distilgpt2", 0.5)):
        write_run(tmp_path / "out", name, {"compfair_crows_pairs": {"likelihood_diff": 1.0}},
                  {"compfair_crows_pairs": [{"doc_id": i, "likelihood_diff": i * 0.1 + shift} for i in range(30)]})
    collection = collect([tmp_path / "out"])
    assert paired_tests(collection).empty  # no compression metadata: nothing paired by itself
    row = paired_tests(collection, [("gpt2", "distilgpt2")]).iloc[0]
    assert row["relation"] == "given" and row["effect"] == pytest.approx(0.5)
    assert row["ci_low"] == pytest.approx(0.5) and row["ci_high"] == pytest.approx(0.5)  # constant difference
    assert compare_runs(collection.run("gpt2"), collection.run("gpt2"))[0]["p_value"] == 1.0


def test_headline_slots_coalesce_groups_and_subtasks():
    frame = pd.DataFrame({
        "model": ["a", "b"], "params": [1e6, 2e6],
        "compfair_winobias:anti_pct_type1": [40.0, None],
        "compfair_winobias_type1:anti_pct": [None, 45.0], "compfair_winobias_type1:anti_pct_stderr": [None, 2.0],
        "compfair_stereoset:ss": [61.0, None], "compfair_stereoset_intrasentence:ss": [None, 58.0],
        "compfair_toxicity_rtp_offline_profanity:emt": [0.2, 0.3], "compfair_toxicity_tccc_tox:emt": [0.5, None],
    })
    wide = columns.with_headline(frame)
    assert wide["headline:winobias_type1_anti_pct"].tolist() == [40.0, 45.0]
    assert math.isnan(wide.at[0, "headline:winobias_type1_anti_pct_stderr"])
    assert wide.at[1, "headline:winobias_type1_anti_pct_stderr"] == 2.0
    labels = [c.label for c in columns.headline(wide)]
    # model b lacks the overall StereoSet score, so the intrasentence column is shown too
    assert labels == ["Model", "Params (M)", "TCCC-toxic EMT", "rtp_offline_profanity EMT", "StereoSet SS",
                      "StereoSet intra SS", "WinoBias-1 anti %"]


def test_number_formats():
    assert format_value("params", 124_439_808) == "124.4"
    assert format_value("size_bytes", 2**20 * 3) == "3.0"
    assert format_value("x", 53_417.2) == "53,417"
    assert format_value("x", 61.234) == "61.23"
    assert format_value("x", 0.12345) == "0.123"
    assert format_value("x", float("nan")) == ""
    assert format_value("limit", 100.0) == "100" and format_value("limit", 0.1) == "0.1"


@pytest.fixture
def two_models(tmp_path):
    teacher = tmp_path / "ckpt" / "teacher"
    teacher.mkdir(parents=True)
    student = tmp_path / "ckpt" / "student"
    write_compression(student, "distill", str(teacher), 60_000_000, 240_000_000, layers=6)
    for path, params, ss, ppl in ((teacher, 124_000_000, 62.5, 30.0), (student, 60_000_000, 57.25, 40.0)):
        write_run(tmp_path / "out", str(path),
                  {"compfair_stereoset": {"ss": ss, "ss_ci_low": ss - 2, "ss_ci_high": ss + 2, "lms": 90.0},
                   "compfair_ppl_bold_wiki": {"word_perplexity": ppl},
                   "compfair_toxicity_rtp_offline": {"emt": 0.3, "emt_stderr": 0.01}},
                  {"compfair_toxicity_rtp_offline": [{"doc_id": i, "emt": 0.1 * (i % 3)} for i in range(9)]},
                  params=params)
    return tmp_path


def test_site_files(two_models):
    site = two_models / "site"
    collection = collect([two_models / "out"])
    written = write_site(collection.frame, paired_tests(collection), site, ["some/file.json: not readable JSON"])
    assert {p.name for p in site.iterdir()} == {
        "leaderboard.csv", "paired_tests.csv", "leaderboard.md", "index.html",
        "perplexity_vs_stereoset_ss.png", "perplexity_vs_toxicity.png", "parameters_vs_fairness.png"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for k, p in written.items() if k.startswith("png:"))

    csv = pd.read_csv(site / "leaderboard.csv").set_index("model")
    assert csv.at["student", "compfair_stereoset:ss"] == 57.25 and csv.at["teacher", "params"] == 124_000_000

    markdown = (site / "leaderboard.md").read_text()
    assert re.search(r"\| student +\| distill +\| teacher +\| +60\.0 \|", markdown)
    assert "57.25 [55.25, 59.25]" in markdown and "0.300 ± 0.010" in markdown
    assert "some/file.json: not readable JSON" in markdown

    html = (site / "index.html").read_text()
    assert '<td data-sort="distill" title="layers=6" class="text">distill</td>' in html  # recipe as tooltip
    assert html.count("<tr>") == 4 + 2 + 2 + 1 + 1  # 4 header rows; 2 models in main and full tables; 1 paired test twice
    assert html.count('src="data:image/png;base64,') == 3
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing fetched from the network


def test_cli(two_models, capsys):
    site = two_models / "site"
    assert leaderboard_main([str(two_models / "out"), "-o", str(site), "--pair", "teacher", "student",
                             "--test", "permutation"]) == 0
    assert "2 model(s), 1 paired test(s)" in capsys.readouterr().out
    assert pd.read_csv(site / "paired_tests.csv")["test"].tolist() == ["permutation"]

    assert leaderboard_main([str(two_models / "out"), "-o", str(site), "--pair", "teacher", "nobody"]) == 2
    assert "no model named 'nobody'" in capsys.readouterr().err
    assert leaderboard_main([str(two_models / "empty"), "-o", str(site)]) == 1
    assert "no lm_eval results found" in capsys.readouterr().err


def test_teacher_by_hub_id_or_unevaluated_folder(tmp_path):
    write_compression(tmp_path / "ckpt" / "gpt2-student", "distill", "gpt2", 1, 1)
    (tmp_path / "elsewhere" / "teacher-x").mkdir(parents=True)
    write_compression(tmp_path / "ckpt" / "orphan", "prune", str(tmp_path / "elsewhere" / "teacher-x"), 1, 1)
    for name in ("gpt2", str(tmp_path / "ckpt" / "gpt2-student"), str(tmp_path / "ckpt" / "orphan")):
        write_run(tmp_path / "out", name, {"wikitext": {"word_perplexity": 1.0}})
    frame = collect([tmp_path / "out"]).frame.set_index("model")
    assert frame.at["gpt2-student", "teacher"] == "gpt2"  # the evaluated hub model
    assert frame.at["orphan", "teacher"] == "teacher-x"  # not evaluated: named, but nothing to pair with
    assert paired_tests(collect([tmp_path / "out"])).empty


def test_malformed_samples_lines_are_skipped_and_named(tmp_path):
    teacher_docs = [{"doc_id": i, "likelihood_diff": 1.0} for i in range(4)]
    collection = _pair_runs(tmp_path, teacher_docs, [{"doc_id": i, "likelihood_diff": 3.0} for i in range(4)])
    samples = collection.run("student").samples["compfair_crows_pairs"]
    with open(samples, "a") as handle:
        handle.write('{"doc_id": 9, "likelih\n')
    rows = paired_tests(collection)
    assert rows["n"].tolist() == [4] and rows["effect"].tolist() == [2.0]
    assert f"{samples}: 1 malformed line(s) skipped" in collection.problems


def test_doc_identity_ignores_what_the_model_or_machine_changes():
    from leaderboard.paired import doc_identity

    stereoset = {"doc": {"id": "intrasentence-0", "n_tokens": [7, 7, 6], "data_source": "shipped:/a"}}
    assert doc_identity(stereoset) == doc_identity({"doc": {"id": "intrasentence-0", "n_tokens": [9, 8, 8]}})
    prompt = {"doc": {"prompt": "So I said", "context": "So I said", "scorer": "detoxify-original"}}
    dialogue = {"doc": {"prompt": "So I said", "context": "So I said<|endoftext|>", "scorer": "detoxify-original"}}
    assert doc_identity(prompt) == doc_identity(dialogue)
    assert doc_identity(prompt) != doc_identity({"doc": {"prompt": "So you said", "context": "So you said"}})
