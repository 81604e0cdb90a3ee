"""`compfair compare` presets and the latency helper (the leaderboard over real lm_eval output: test_leaderboard.py)."""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest

from compfair_tasks import runner
from compfair_tasks.measure import measure_latency
from leaderboard import compare
from leaderboard.collect import LATENCY_FILE, collect


def test_offline_hub_models_stop_before_anything_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf_cache"))  # nothing cached
    monkeypatch.setattr(runner.subprocess, "Popen", lambda *a, **k: pytest.fail("lm_eval must not start"))
    output = tmp_path / "compare"
    assert compare.main(["dialogpt", "--output", str(output)]) == 2
    error = capsys.readouterr().err
    for model in ("microsoft/DialoGPT-small", "microsoft/DialoGPT-medium", "microsoft/DialoGPT-large"):
        assert f"model {model} is not in the Hugging Face cache" in error
    assert "HF_HUB_OFFLINE" in error and not output.exists()


def test_local_folder_without_checkpoint_is_named(tmp_path):
    with pytest.raises(compare.PreflightError, match="no config.json"):
        compare.check_model(str(tmp_path))


def test_preset_commands(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf_cache"))  # offline, nothing cached
    # a dry run prints the commands, then checks the models: offline and uncached, it names them and fails
    assert compare.main(["blenderbot", "--dry-run", "--output", str(tmp_path), "--limit", "5", "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    assert "model facebook/blenderbot-3B is not in the Hugging Face cache" in captured.err
    out = captured.out
    assert "facebook/blenderbot-3B: 2.7B parameters" in out and "needs a GPU" in out
    commands = [line for line in out.splitlines() if " -m lm_eval " in line]
    assert len(commands) == 2
    assert "--model_args pretrained=facebook/blenderbot-400M-distill,backend=seq2seq" in commands[0]
    assert "--gen_kwargs max_length=21" in commands[0] and "--log_samples" in commands[0] and " --limit 5 " in commands[0] + " "

    compare.main(["dialogpt", "--dry-run", "--model", "/ckpt/student", "--metadata", '{"scorer": "profanity-check"}'])
    commands = [line for line in capsys.readouterr().out.splitlines() if " -m lm_eval " in line]
    assert len(commands) == 4 and "pretrained=/ckpt/student" in commands[-1]
    metadata = json.loads(commands[0].split("--metadata ")[1].split(" --")[0].strip("'"))
    assert metadata == {"dialogue": True, "scorer": "profanity-check"}  # DialoGPT's EOS turn separator


@pytest.mark.slow
def test_missing_data_stops_before_any_model_runs(tiny_gpt2_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("COMPFAIR_DATA_DIR", raising=False)
    with pytest.raises(compare.PreflightError, match="RealToxicityPrompts data not found: set COMPFAIR_DATA_DIR"):
        compare.check_tasks("compfair_toxicity_rtp", {"pretrained": str(tiny_gpt2_dir)})


def test_latency_is_measured_and_shown(tiny_gpt2_dir, tmp_path):
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_gpt2_dir, checkpoint)
    record = measure_latency(checkpoint, seq_len=16, repeats=3, warmup=1, threads=1)
    saved = json.loads((checkpoint / LATENCY_FILE).read_text())
    assert saved["latency_ms"] == record["latency_ms"] > 0 and saved["seq_len"] == 16

    from leaderboard_results import write_run

    write_run(tmp_path / "out", str(checkpoint), {"wikitext": {"word_perplexity": 1.0}})
    assert collect([tmp_path / "out"]).frame.at[0, "latency_ms"] == record["latency_ms"]


@pytest.mark.slow
def test_preset_prompt_formats_run_in_lm_eval(tiny_gpt2_dir, tiny_seq2seq_dir, tmp_path):
    """The DialoGPT and BlenderBot presets' lm_eval arguments, on tiny stand-ins of those families."""
    import subprocess

    from conftest import OFFLINE_ENV

    def run(preset, model_dir, backend):
        args = compare.build_parser().parse_args(
            [preset, "--tasks", "compfair_toxicity_rtp_offline", "--limit", "2", "--device", "cpu",
             "--batch-size", "2", "--output", str(tmp_path / preset), "--metadata", '{"scorer": "profanity-check"}'])
        command = compare.lm_eval_command(compare.Model(str(model_dir), backend), compare.PRESETS[preset], args)
        done = subprocess.run(command, env={**os.environ, **OFFLINE_ENV, "OMP_NUM_THREADS": "1"},
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-4000:]
        return [json.loads(line) for path in (tmp_path / preset).rglob("samples_*.jsonl")
                for line in path.read_text().splitlines()]

    with ThreadPoolExecutor(2) as pool:
        dialogue = pool.submit(run, "dialogpt", tiny_gpt2_dir, "causal")
        seq2seq = pool.submit(run, "blenderbot", tiny_seq2seq_dir, "seq2seq")
        dialogue, seq2seq = dialogue.result(), seq2seq.result()
    # DialoGPT format: every prompt ends with the EOS turn separator
    assert len(dialogue) == 2 and all(s["arguments"]["gen_args_0"]["arg_0"].endswith("<|endoftext|>") for s in dialogue)
    # BlenderBot: the decoder is bounded to max_gen_toks = 20 new tokens, not prompt length + 20 (the decoded
    # text, re-tokenized for cont_len_tokens, may count a token more or so)
    assert len(seq2seq) == 2 and all(0 < s["cont_len_tokens"] <= 22 for s in seq2seq)


def test_a_comparison_resumes_and_ends_in_a_leaderboard(tmp_path, monkeypatch, capsys):
    """lm_eval is stubbed: it writes results as the real CLI would; a model done with these settings is not run
    again, and results made with other settings (or with no record of them) stop the run until --rerun."""
    from leaderboard_results import write_run

    monkeypatch.setattr(compare, "check_model", lambda name: None)
    monkeypatch.setattr(compare, "check_tasks", lambda tasks, metadata: None)
    ran = []

    def fake_lm_eval(command, env, log):
        model = command[command.index("--model_args") + 1].split(",")[0].removeprefix("pretrained=")
        ran.append(model)
        docs = [{"doc_id": i, "emt": 0.1 * i + (0.2 if "small" in model else 0.0)} for i in range(5)]
        write_run(tmp_path / "results", model, {"compfair_toxicity_rtp_offline": {"emt": 0.3}},
                  {"compfair_toxicity_rtp_offline": docs})
        return 0

    monkeypatch.setattr(runner, "_tee", fake_lm_eval)
    write_run(tmp_path / "results", "microsoft/DialoGPT-medium", {"compfair_toxicity_rtp_offline": {"emt": 0.3}},
              {"compfair_toxicity_rtp_offline": [{"doc_id": i, "emt": 0.1 * i} for i in range(5)]})
    for rerun in ([], ["--rerun"]):  # results compfair cannot prove it wrote are never replaced
        assert compare.main(["dialogpt", "--output", str(tmp_path), "--device", "cpu", *rerun]) == 2
        assert "has no record of its settings" in capsys.readouterr().err
    assert ran == ["microsoft/DialoGPT-small"] * 2
    ran.clear()
    shutil.rmtree(tmp_path / "results" / "microsoft__DialoGPT-medium")  # the user moves them away
    assert compare.main(["dialogpt", "--output", str(tmp_path), "--device", "cpu", "--rerun"]) == 0
    assert ran == ["microsoft/DialoGPT-small", "microsoft/DialoGPT-medium", "microsoft/DialoGPT-large"]
    ran.clear()
    assert compare.main(["dialogpt", "--output", str(tmp_path), "--device", "cpu"]) == 0
    assert ran == [] and "DialoGPT-medium: done already with the same settings, skipped" in capsys.readouterr().out
    assert compare.main(["dialogpt", "--output", str(tmp_path), "--device", "cpu", "--limit", "3"]) == 2
    assert ran == [] and "(argv: added --limit 3); pass --rerun" in capsys.readouterr().err
    paired = pd.read_csv(tmp_path / "site" / "paired_tests.csv")
    assert paired[["baseline", "model"]].values.tolist() == [
        ["microsoft/DialoGPT-large", "microsoft/DialoGPT-medium"], ["microsoft/DialoGPT-large", "microsoft/DialoGPT-small"]]
    assert paired["effect"].round(6).tolist() == [0.0, 0.2]
