"""Leaderboard: collecting lm_eval output folders, paired tests, and the written site (CSV, Markdown, HTML, PNG)."""

from __future__ import annotations

import json
import math
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from leaderboard import columns, render, sitedir
from leaderboard.cli import main as leaderboard_main
from leaderboard.collect import LATENCY_FILE, collect, parse_model_args, task_metrics
from leaderboard.degeneration import NOT_COMPARABLE, Thresholds, assess, mark
from leaderboard.flips import flip_rates
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
    assert format_value("x", float("nan")) == "" and format_value("n", 1508) == "1,508"
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


def test_site_cells_tooltips_and_no_network(two_models):
    site = two_models / "site"
    collection = collect([two_models / "out"])
    written = write_site(collection.frame, paired_tests(collection), site, ["some/file.json: not readable JSON"])
    assert written["html"] == site / "index.html" and written["csv"].is_file()
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for k, p in written.items() if k.startswith("png:"))
    csv = pd.read_csv(site / "leaderboard.csv").set_index("model")
    assert csv.at["student", "compfair_stereoset:ss"] == 57.25 and csv.at["teacher", "params"] == 124_000_000
    markdown = (site / "leaderboard.md").read_text()
    assert re.search(r"\| student +\| +hf +\| distill +\| teacher +\| +60\.0 \|", markdown)  # model type: lm_eval --model
    assert "57.25 [55.25, 59.25]" in markdown and "0.300 ± 0.010" in markdown
    assert "some/file.json: not readable JSON" in markdown
    html = (site / "index.html").read_text()
    assert '<td data-sort="distill" title="layers=6" class="text">distill</td>' in html  # recipe as tooltip
    assert '<td data-sort="9.0" data-numeric="1">9</td>' in html  # the paired test's n sorts as a number
    # 4 header rows (main, paired, all paired, all metrics); 2 models twice; 1 paired test twice; no flip rate
    assert html.count("<tr>") == 4 + 2 + 2 + 1 + 1 and 'id="flips"' not in html
    assert html.count('src="data:image/png;base64,') == len([k for k in written if k.startswith("png:")]) == 3
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing fetched from the network


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
    scored = {"doc": {**prompt["doc"], "scorer_revision": "alt-profanity-check==1.9.1", "fluency_model": "/m/t",
                      "fluency_revision": "sha256:4f7b", "scoring": '{"tokenizer": {"name": "/m/student"}}'}}
    assert doc_identity(prompt) == doc_identity(scored)  # the filter's settings name the evaluated model
    assert doc_identity(prompt) != doc_identity({"doc": {"prompt": "So you said", "context": "So you said"}})


# --- the site: atomic swap, lock, no stale files, latency kept in the site ---------------------------------------


def _site_bytes(site):
    return {p.relative_to(site): p.read_bytes() for p in sorted(site.rglob("*")) if p.is_file()}


def test_a_build_that_fails_after_the_csv_leaves_the_old_site_intact(two_models, monkeypatch):
    site = two_models / "site"
    assert leaderboard_main([str(two_models / "out"), "-o", str(site)]) == 0
    before = _site_bytes(site)
    assert before[pathlib.Path("index.html")]  # not empty

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while rendering")  # after leaderboard.csv is written

    monkeypatch.setattr(render, "to_html", killed)
    with pytest.raises(KeyboardInterrupt):
        leaderboard_main([str(two_models / "out"), "-o", str(site), "--title", "new"])
    assert _site_bytes(site) == before
    assert sorted(p.name for p in site.parent.iterdir() if p.name.startswith(".site")) == [".site.lock"]


@pytest.mark.slow  # a subprocess importing pandas and matplotlib: ~5 s idle, 20 s on a loaded machine
def test_a_build_killed_with_sigkill_mid_render_leaves_the_old_site(two_models):
    site = two_models / "site"
    assert leaderboard_main([str(two_models / "out"), "-o", str(site)]) == 0
    before = _site_bytes(site)
    rendering = two_models / "rendering"
    script = (f"import time, leaderboard.render as r\n"
              f"def stall(*a, **k):\n    open({str(rendering)!r}, 'w').close(); time.sleep(120)\n"
              f"r.to_html = stall\n"
              f"from leaderboard.cli import main\nmain([{str(two_models / 'out')!r}, '-o', {str(site)!r}])\n")
    build = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 120
        while not rendering.exists():  # the new CSV and Markdown are written by now
            assert build.poll() is None and time.monotonic() < deadline, "the build did not reach rendering"
            time.sleep(0.1)
        build.send_signal(signal.SIGKILL)
        build.wait()
    finally:
        if build.poll() is None:
            build.kill()
    assert _site_bytes(site) == before
    [leftover] = two_models.glob(".site.building-*")
    assert (leftover / "leaderboard.csv").is_file()  # the killed build's half-written site, beside, not in it
    assert leaderboard_main([str(two_models / "out"), "-o", str(site)]) == 0
    assert not list(two_models.glob(".site.building-*"))


def test_without_an_atomic_exchange_the_old_site_is_moved_aside_then_replaced(two_models, monkeypatch):
    site = two_models / "site"
    assert leaderboard_main([str(two_models / "out"), "-o", str(site), "--title", "old"]) == 0
    monkeypatch.setattr("compressors.output._exchange", lambda a, b: False)  # a file system without RENAME_EXCHANGE
    assert leaderboard_main([str(two_models / "out"), "-o", str(site), "--title", "new"]) == 0
    assert "<title>new</title>" in (site / "index.html").read_text()
    assert sorted(p.name for p in two_models.iterdir() if p.name.startswith(".site")) == [".site.lock"]


def test_leftovers_of_a_killed_build_are_cleaned_and_a_site_renamed_aside_is_restored(two_models):
    site = two_models / "site"
    assert leaderboard_main([str(two_models / "out"), "-o", str(site)]) == 0
    before = _site_bytes(site)
    site.rename(two_models / ".site.previous-1-1")  # killed between moving the old site aside and the new one in
    (two_models / ".site.building-x").mkdir()
    (two_models / ".site.building-x" / "index.html").write_text("")
    with sitedir.lock(site):
        sitedir._recover(site.absolute())
    assert _site_bytes(site) == before
    assert not list(two_models.glob(".site.building-*")) and not list(two_models.glob(".site.previous-*"))


def test_a_rebuild_leaves_no_stale_plot(two_models, tmp_path):
    site = two_models / "site"
    assert leaderboard_main([str(two_models / "out"), "-o", str(site)]) == 0
    assert (site / "toxicity_vs_fluency.png").is_file()
    write_run(tmp_path / "other", "gpt2", {"compfair_crows_pairs": {"pct_stereotype": 55.0}}, params=10)
    assert leaderboard_main([str(tmp_path / "other"), "-o", str(site)]) == 0
    assert sorted(p.name for p in site.iterdir()) == [".compfair_site", "flip_rates.csv", "index.html",
                                                       "leaderboard.csv", "leaderboard.md", "paired_tests.csv",
                                                       "parameters_vs_fairness.png"]


def test_a_folder_that_is_not_a_site_or_is_a_file_is_refused(two_models, capsys):
    mine = two_models / "my_documents"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    assert leaderboard_main([str(two_models / "out"), "-o", str(mine)]) == 2
    assert "is not a compfair site" in capsys.readouterr().err and (mine / "thesis.tex").read_text() == "precious"
    (two_models / "file").write_text("x")
    assert leaderboard_main([str(two_models / "out"), "-o", str(two_models / "file")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_a_second_build_waits_for_the_lock_or_stops_naming_it(two_models, capsys):
    site = two_models / "site"
    with sitedir.lock(site), ThreadPoolExecutor(1) as pool:  # another thread opens the lock file anew
        status = pool.submit(leaderboard_main, [str(two_models / "out"), "-o", str(site), "--lock-timeout", "0.5"])
        assert status.result() == 2
    assert f"another leaderboard build holds {two_models / '.site.lock'}" in capsys.readouterr().err
    assert not site.exists()


def test_two_concurrent_builds_do_not_mix(two_models, monkeypatch):
    site = two_models / "site"
    slow_plots = render.write_plots

    def write_plots(frame, folder):
        time.sleep(0.5)  # long enough for the other build to try its luck in the middle
        return slow_plots(frame, folder)

    monkeypatch.setattr(render, "write_plots", write_plots)
    with ThreadPoolExecutor(2) as pool:
        statuses = list(pool.map(leaderboard_main, [[str(two_models / "out"), "-o", str(site), "--title", title]
                                                    for title in ("build-A", "build-B")]))
    assert statuses == [0, 0]
    title = re.search(r"<title>(build-[AB])</title>", (site / "index.html").read_text()).group(1)
    assert (site / "leaderboard.md").read_text().startswith(f"# {title}\n")  # both files from the same build
    assert not list(two_models.glob(".site.building-*"))


@pytest.mark.slow
def test_measured_latency_is_kept_in_the_site_not_the_checkpoint(tiny_gpt2_dir, tmp_path, monkeypatch):
    checkpoint = shutil.copytree(tiny_gpt2_dir, tmp_path / "ckpt")
    write_run(tmp_path / "out", str(checkpoint), {"wikitext": {"word_perplexity": 1.0}})
    site = tmp_path / "site"
    assert leaderboard_main([str(tmp_path / "out"), "-o", str(site), "--measure-latency", "--threads", "1"]) == 0
    assert sorted(p.name for p in checkpoint.iterdir()) == sorted(p.name for p in tiny_gpt2_dir.iterdir())
    [record_file] = (site / "latency").iterdir()
    record = json.loads(record_file.read_text())
    assert record["checkpoint"] == str(checkpoint.resolve())
    assert pd.read_csv(site / "leaderboard.csv").at[0, "latency_ms"] == pytest.approx(record["latency_ms"])

    import leaderboard.cli

    monkeypatch.setattr(leaderboard.cli, "measure_latency", lambda *a, **k: pytest.fail("measured twice"))
    assert leaderboard_main([str(tmp_path / "out"), "-o", str(site), "--measure-latency"]) == 0  # reused
    assert json.loads((site / "latency" / record_file.name).read_text()) == record
    (checkpoint / "model.safetensors").touch()  # the checkpoint changed: the old number no longer holds
    monkeypatch.setattr(leaderboard.cli, "measure_latency", lambda *a, **k: {"latency_ms": 7.0})
    assert leaderboard_main([str(tmp_path / "out"), "-o", str(site), "--measure-latency"]) == 0
    assert pd.read_csv(site / "leaderboard.csv").at[0, "latency_ms"] == 7.0


# --- flip rates, BOLD group gaps, the degeneration flag on hand-made values ---------------------------------------


def _stereoset_record(i, stereo_wins):
    return {"id": f"intrasentence-{i}", "target": "t", "stereotype": -1.0 if stereo_wins else -3.0, "anti": -2.0,
            "unrelated": -9.0}


def test_flip_rates_count_each_direction_with_wilson_intervals(tmp_path):
    teacher, student = tmp_path / "ckpt" / "teacher", tmp_path / "ckpt" / "student"
    teacher.mkdir(parents=True)
    write_compression(student, "prune", str(teacher), 1, 1)
    teacher_ss, student_ss = [1, 0, 1, 0, 1], [0, 0, 1, 1, 1]  # doc 0 to anti, doc 3 to stereotype
    teacher_anti, student_anti = [100.0, 100.0, 0.0, 0.0], [0.0, 0.0, 0.0, 100.0]  # 2 to stereotype, 1 to anti
    for path, ss, anti in ((teacher, teacher_ss, teacher_anti), (student, student_ss, student_anti)):
        write_run(tmp_path / "out", str(path), {"compfair_stereoset_intrasentence": {"ss": 50.0},
                                                "compfair_winobias_type1": {"anti_pct": 50.0}},
                  {"compfair_stereoset_intrasentence": [
                      {"doc_id": i, "doc": {"id": f"intrasentence-{i}"}, "ss": _stereoset_record(i, w)}
                      for i, w in enumerate(ss)],
                   "compfair_winobias_type1": [{"doc_id": i, "anti_pct": v} for i, v in enumerate(anti)]})
    flips = flip_rates(collect([tmp_path / "out"])).set_index("task")
    stereoset = flips.loc["compfair_stereoset_intrasentence"]
    assert (stereoset["n"], stereoset["to_stereotype"], stereoset["to_anti"], stereoset["flipped"]) == (5, 0.2, 0.2, 0.4)
    # Wilson 95% of 1/5: (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n), z = 1.959964
    assert (stereoset["to_stereotype_ci_low"], stereoset["to_stereotype_ci_high"]) == pytest.approx((0.036224, 0.624465),
                                                                                                     abs=1e-6)
    winobias = flips.loc["compfair_winobias_type1"]
    assert (winobias["to_stereotype"], winobias["to_anti"]) == (0.5, 0.25)


def _bold_docs(scores_by_group):
    docs, i = [], 0
    for group, scores in scores_by_group.items():
        for score in scores:
            docs.append({"doc_id": i, "doc": {"id": f"bold-{i}", "domain": "gender", "group": group},
                         "tox_mean": score, "sent_mean": 0.5, "tox_mean_gap": [group, score],
                         "tox_mean_gap_p": [group, score]})  # as compfair_tasks.bold logs its gap items
            i += 1
    return docs


def test_bold_gap_columns_group_plot_and_paired_gap_test(tmp_path):
    teacher, student = tmp_path / "ckpt" / "teacher", tmp_path / "ckpt" / "student"
    teacher.mkdir(parents=True)
    write_compression(student, "distill", str(teacher), 1, 1)
    # every prompt of a group scores the same, so any within-group resample has the observed gap
    runs = {teacher: {"American_actors": [0.1, 0.1], "American_actresses": [0.3, 0.3, 0.3]},
            student: {"American_actors": [0.2, 0.2], "American_actresses": [0.7, 0.7, 0.7]}}
    for path, groups in runs.items():
        gap = max(map(np.mean, groups.values())) - min(map(np.mean, groups.values()))
        write_run(tmp_path / "out", str(path), {"compfair_bold_gender": {
            "tox_mean_gap": gap, "tox_mean_gap_ci_low": gap - 0.01, "tox_mean_gap_ci_high": gap + 0.01,
            "sent_mean_gap": 0.0, **{f"tox_mean_{g.lower()}": v[0] for g, v in groups.items()}}},
            {"compfair_bold_gender": _bold_docs(groups)})
    site = tmp_path / "site"
    assert leaderboard_main([str(tmp_path / "out"), "-o", str(site)]) == 0
    paired = pd.read_csv(site / "paired_tests.csv").set_index("metric")
    row = paired.loc["tox_mean_gap"]
    assert (row["per_doc"], row["n"]) == ("group gap", 5)
    assert (row["baseline_mean"], row["model_mean"]) == pytest.approx((0.2, 0.5))
    assert row["effect"] == pytest.approx(0.3) and (row["ci_low"], row["ci_high"]) == pytest.approx((0.3, 0.3))
    assert "sent_mean_gap" in paired.index and paired.at["sent_mean_gap", "effect"] == 0.0
    assert "tox_mean_gap_gap" not in paired.index  # the logged gap record itself is not tested per doc
    markdown = (site / "leaderboard.md").read_text()
    assert "BOLD gender tox. gap ↓" in markdown and "0.500 [0.490, 0.510]" in markdown
    assert (site / "bold_groups.png").read_bytes()[:4] == b"\x89PNG"


def _row(**values):
    return {"model": "m", **values}


def test_thresholds_are_settable_and_checked(two_models, capsys):
    site = two_models / "site"
    assert leaderboard_main([str(two_models / "out"), "-o", str(site), "--fluency-factor", "3", "--lms-floor", "55"]) == 0
    thresholds = pd.read_csv(site / "leaderboard.csv").set_index("model").at["student", "degeneration_thresholds"]
    assert "fluency PPL > 3x the teacher's" in thresholds and "LMS < 55" in thresholds
    assert "fluency PPL &gt; 3x the teacher&#39;s" in (site / "index.html").read_text()
    with pytest.raises(SystemExit) as stop:
        leaderboard_main([str(two_models / "out"), "-o", str(site), "--distinct-ratio", "1.5"])
    assert stop.value.code == 2 and "--distinct-ratio 1.5 is outside [0, 1]" in capsys.readouterr().err


def _assess(base, model, limits=None):
    limits = Thresholds() if limits is None else limits
    return assess(pd.Series(base), pd.Series(model), limits)  # frame rows, as the leaderboard passes them


def test_degeneration_rules_at_their_thresholds():
    limits = Thresholds()
    base = _row(**{"t:emt": 0.3, "t:fluency_ppl": 40.0, "t:distinct_2": 0.8, "t:empty_frac": 0.0,
                   "compfair_ppl_bold_wiki:word_perplexity": 500.0})
    assert _assess(base, base) == []  # the teacher against itself
    assert _assess(base, {**base, "t:fluency_ppl": 80.0, "t:emt": 0.1}) == []  # exactly 2x is not past 2x
    [reason] = _assess(base, {**base, "t:fluency_ppl": 80.1, "t:emt": 0.1})
    assert reason.kind == "toxicity" and "2.0x > 2x; fluency_ppl" in reason.text
    assert _assess(base, {**base, "t:fluency_ppl": 800.0, "t:emt": 0.3}) == []  # toxicity did not fall
    [reason] = _assess(base, {**base, "t:distinct_2": 0.39, "t:emt": 0.2})
    assert "distinct-2 0.39 vs 0.8" in reason.text
    [reason] = _assess(base, {**base, "t:empty_frac": 0.3, "t:emt": 0.2})
    assert "empty share 0.3" in reason.text
    no_fluency = {k: v for k, v in base.items() if k != "t:fluency_ppl"}
    [reason] = _assess(no_fluency, {**no_fluency, "t:emt": 0.0, "compfair_ppl_bold_wiki:word_perplexity": 6834.0})
    assert "6834 vs 500 (13.7x > 2x; BOLD-wiki PPL, as the task logged no fluency_ppl)" in reason.text
    assert _assess(base, {**base, "t:fluency_ppl": 800.0, "t:emt": 0.1}, Thresholds(fluency_factor=25)) == []

    teacher = _row(**{"headline:stereoset_ss": 58.9, "headline:stereoset_lms": 88.0})
    [reason] = _assess(teacher, _row(**{"headline:stereoset_ss": 52.0, "headline:stereoset_lms": 77.9}), limits)
    assert reason.kind == "preference" and "LMS fell 88.0 -> 77.9 (> 10 points)" in reason.text
    assert _assess(teacher, _row(**{"headline:stereoset_ss": 52.0, "headline:stereoset_lms": 78.0})) == []
    [reason] = _assess(_row(**{"headline:stereoset_ss": 58.9, "headline:stereoset_lms": 62.0}),
                      _row(**{"headline:stereoset_ss": 52.0, "headline:stereoset_lms": 59.0}))
    assert "LMS 59.0 < floor 60" in reason.text
    assert _assess(teacher, _row(**{"headline:stereoset_ss": 65.0, "headline:stereoset_lms": 50.0})) == []  # away


def test_paired_tests_of_a_flagged_family_are_not_comparable():
    frame = pd.DataFrame([_row(**{"headline:stereoset_ss": 58.9, "headline:stereoset_lms": 90.0}) | {"model": "t"},
                          _row(**{"headline:stereoset_ss": 50.0, "headline:stereoset_lms": 50.0}) | {"model": "s"}])
    tests = pd.DataFrame({"baseline": ["t"] * 4, "model": ["s"] * 4, "metric": ["ss", "lms", "anti_pct", "emt"],
                          "task": ["compfair_stereoset_all", "compfair_stereoset_all", "compfair_winobias_type1",
                                   "compfair_toxicity_rtp"]})
    # LMS is the evidence of the flag, not a fairness gain; toxicity is another family
    assert mark(tests, frame)["note"].tolist() == [NOT_COMPARABLE, "", NOT_COMPARABLE, ""]


# --- the core, on real lm_eval output of two tiny models -----------------------------------------------------------

REAL_TASKS = ("compfair_crows_pairs", "compfair_winobias_type1", "compfair_stereoset_intrasentence",
              "compfair_ppl_bold_wiki", "compfair_toxicity_rtp_offline")
REAL_LIMIT = 6


def save_degenerate_student(teacher, path):
    """The teacher made to write " the the the ...": its final layer norm outputs (a multiple of) the embedding of
    " the", so every next-token distribution puts ~all mass there (GPT-2 ties the output to the embedding)."""
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(teacher)
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(3000 * model.transformer.wte.weight[262])
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(teacher).save_pretrained(path)
    (path / "compfair_compression.json").write_text(json.dumps(
        {"method": "prune", "source_model": str(teacher), "settings": {"note": "made degenerate on purpose"}}))
    return path


@pytest.fixture(scope="session")
def real_runs(tmp_path_factory):
    """One real `lm_eval` run per model, --limit 6 --log_samples: a tiny random GPT-2 teacher and a student of it
    that writes only " the"."""
    from conftest import run_lm_eval, save_tiny_gpt2

    root = tmp_path_factory.mktemp("real_lm_eval")
    teacher = save_tiny_gpt2(root / "ckpt" / "teacher")
    student = save_degenerate_student(teacher, root / "ckpt" / "student")

    def evaluate(model):
        return run_lm_eval(["--model", "hf", "--model_args", f"pretrained={model}", "--tasks", ",".join(REAL_TASKS),
                            "--metadata", '{"scorer": "profanity-check"}', "--limit", str(REAL_LIMIT),
                            "--log_samples", "--device", "cpu", "--batch_size", "8"],
                           root / "out" / model.name, env={"OMP_NUM_THREADS": "1"})

    with ThreadPoolExecutor(2) as pool:
        results = dict(zip(("teacher", "student"), pool.map(evaluate, [teacher, student])))
    return SimpleNamespace(root=root, out=root / "out", teacher=teacher, student=student, results=results)


def _samples(real_runs, model, task):
    [path] = (real_runs.out / model).rglob(f"samples_{task}_*.jsonl")
    return {line["doc_id"]: line for line in map(json.loads, path.read_text().splitlines())}


@pytest.mark.slow
def test_real_collect_equals_lm_evals_own_numbers(real_runs):
    collection = collect([real_runs.out])
    assert collection.problems == []
    frame = collection.frame.set_index("model")
    for model in ("teacher", "student"):
        for task, entry in real_runs.results[model]["results"].items():
            for key, value in entry.items():
                if "," in key and isinstance(value, (int, float)) and not math.isnan(value):
                    assert frame.at[model, f"{task}:{key.split(',')[0]}"] == value, (model, task, key)
        assert frame.at[model, "params"] == real_runs.results[model]["config"]["model_num_parameters"]
        assert frame.at[model, "limit"] == REAL_LIMIT and frame.at[model, "scorer"] == "profanity-check"
    assert (frame.at["student", "teacher"], frame.at["student", "method"]) == ("teacher", "prune")
    assert frame.at["teacher", "method"] == "none"


@pytest.mark.slow
def test_real_paired_tests_average_to_the_task_aggregates(real_runs):
    paired = paired_tests(collect([real_runs.out])).set_index(["task", "metric"])
    for task, metric, scored in (("compfair_crows_pairs", "pct_stereotype", "none"),
                                 ("compfair_winobias_type1", "anti_pct", "none"),
                                 ("compfair_toxicity_rtp_offline", "emt", "scored")):
        row = paired.loc[(task, metric)]
        teacher, student = (real_runs.results[m]["results"][task][f"{metric},{scored}"] for m in ("teacher", "student"))
        assert (row["baseline"], row["model"], row["n"]) == ("teacher", "student", REAL_LIMIT)
        assert (row["baseline_mean"], row["model_mean"]) == pytest.approx((teacher, student))
        assert row["effect"] == pytest.approx(student - teacher)
    nll = paired.loc[("compfair_ppl_bold_wiki", "word_perplexity")]
    docs = _samples(real_runs, "teacher", "compfair_ppl_bold_wiki").values()
    assert nll["per_doc"] == "NLL per unit"
    assert nll["baseline_mean"] == pytest.approx(np.mean([-d["word_perplexity"][0] / d["word_perplexity"][1] for d in docs]))


@pytest.mark.slow
def test_real_flip_rates_match_the_logged_preferences(real_runs):
    flips = flip_rates(collect([real_runs.out])).set_index("task")
    preferred = {  # doc id -> prefers the stereotype, read straight from the samples files
        "compfair_crows_pairs": lambda d: d["pct_stereotype"] == 100.0,
        "compfair_winobias_type1": lambda d: d["anti_pct"] == 0.0,
        "compfair_stereoset_intrasentence": lambda d: d["ss"]["stereotype"] > d["ss"]["anti"],
    }
    assert sorted(flips.index) == sorted(preferred)
    for task, prefers in preferred.items():
        teacher, student = (_samples(real_runs, m, task) for m in ("teacher", "student"))
        to_stereo = sum(not prefers(teacher[i]) and prefers(student[i]) for i in teacher)
        to_anti = sum(prefers(teacher[i]) and not prefers(student[i]) for i in teacher)
        row = flips.loc[task]
        assert (row["n"], row["to_stereotype"], row["to_anti"]) == (REAL_LIMIT, to_stereo / 6, to_anti / 6), task
    crows = flips.loc["compfair_crows_pairs"]  # the net flip is the change of the stereotype rate
    rates = [real_runs.results[m]["results"]["compfair_crows_pairs"]["pct_stereotype,none"] for m in ("teacher", "student")]
    assert crows["to_stereotype"] - crows["to_anti"] == pytest.approx((rates[1] - rates[0]) / 100)


@pytest.mark.slow
def test_real_degenerate_student_is_flagged_and_the_teacher_against_itself_is_not(real_runs):
    site = real_runs.root / "site"
    assert leaderboard_main([str(real_runs.out), "-o", str(site), "--pair", "teacher", "teacher"]) == 0
    csv = pd.read_csv(site / "leaderboard.csv").set_index("model")
    texts = [s["filtered_resps"][0] for s in _samples(real_runs, "student", "compfair_toxicity_rtp_offline").values()]
    assert all(json.loads(r)["text"].strip("the ") == "" for resps in texts for r in resps)  # it writes " the" only
    result = {m: real_runs.results[m]["results"] for m in ("teacher", "student")}
    emt = [result[m]["compfair_toxicity_rtp_offline"]["emt,scored"] for m in ("teacher", "student")]
    ppl = [result[m]["compfair_ppl_bold_wiki"]["word_perplexity,none"] for m in ("teacher", "student")]
    assert emt[1] < emt[0] and ppl[1] > 2 * ppl[0]  # what the flag reads; known from lm_eval's own results
    assert bool(csv.at["student", "degenerate"]) is True and pd.isna(csv.at["teacher", "degenerate"])
    assert (f"compfair_toxicity_rtp_offline emt fell {emt[0]:.3g} -> {emt[1]:.3g} while fluency {ppl[1]:.4g} vs "
            f"{ppl[0]:.4g} ({ppl[1] / ppl[0]:.2g}x > 2x; BOLD-wiki PPL, as the task logged no fluency_ppl)"
            ) in csv.at["student", "degeneration"]
    assert "fluency PPL > 2x the teacher's" in csv.at["student", "degeneration_thresholds"]

    paired = pd.read_csv(site / "paired_tests.csv", keep_default_na=False)
    student = paired[paired["model"] == "student"].set_index(["task", "metric"])["note"]
    assert student[("compfair_toxicity_rtp_offline", "emt")] == NOT_COMPARABLE
    assert student[("compfair_toxicity_rtp_offline", "tox_sum")] == NOT_COMPARABLE
    # what the flag reads is its evidence, not a gain
    assert student[("compfair_toxicity_rtp_offline", "cont_len_words")] == ""
    assert student[("compfair_ppl_bold_wiki", "word_perplexity")] == ""
    itself = paired[paired["model"] == "teacher"]
    assert set(itself["note"]) == {""} and set(itself["effect"]) == {0.0}
    flips = pd.read_csv(site / "flip_rates.csv").set_index(["baseline", "model", "task"])
    same = flips.loc[("teacher", "teacher")]
    assert set(same["flipped"]) == {0.0}
    assert same["to_stereotype_ci_high"].tolist() == pytest.approx([1.959964**2 / (6 + 1.959964**2)] * 3, abs=1e-6)

    html = (site / "index.html").read_text()
    assert html.count("FLAGGED") == 1 and html.count(NOT_COMPARABLE) >= 2 and 'id="flips"' in html
    assert {p.name for p in site.iterdir()} >= {"leaderboard.csv", "paired_tests.csv", "flip_rates.csv",
                                                "leaderboard.md", "index.html", "toxicity_vs_fluency.png",
                                                "parameters_vs_fairness.png"}


def test_an_embedded_model_is_named_by_what_it_is(tmp_path):
    """The converted SmolLM2 folder is shown as the title compfair model-dir recorded, not as its folder name."""
    from leaderboard_results import write_run

    teacher = tmp_path / "models" / "smollm2-135m"
    teacher.mkdir(parents=True)
    (teacher / "config.json").write_text("{}")
    (teacher / "compfair_source.json").write_text(json.dumps({"title": "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized)"}))
    plain = tmp_path / "models" / "student"
    plain.mkdir()
    (plain / "config.json").write_text("{}")
    write_run(tmp_path / "out", str(teacher), {"wikitext": {"word_perplexity": 1.0}})
    write_run(tmp_path / "out", str(plain), {"wikitext": {"word_perplexity": 2.0}})
    assert sorted(collect([tmp_path / "out"]).frame["model"]) == ["SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized)",
                                                                   "student"]
