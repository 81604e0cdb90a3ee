"""Study runner: spec validation (line numbers), plan order, resume by settings key, failure isolation, and a
real offline study over three hub revisions of a tiny model (Hugging Face cache built here)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from compfair_tasks.errors import CompfairError
from conftest import OFFLINE_ENV, save_tiny_gpt2
from leaderboard.studies import cells as cells_module
from leaderboard.studies.executors import LocalExecutor
from leaderboard.studies.plan import cell_dir, load_plan, make_plan, write_plan
from leaderboard.studies.spec import load_spec
from leaderboard.studies.status import cell_states, summary


def _spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


CHECKPOINT_SPEC = """name: resume
tasks: [compfair_crows_pairs]
limit: 2
series:
  - name: student
    checkpoints: ck
compressions: [none]
"""


@pytest.fixture
def checkpoints(tmp_path):
    for step in (0, 10, 5):
        save_tiny_gpt2(tmp_path / "ck" / f"checkpoint-{step}", n_layer=1, seed=step)
    return tmp_path / "ck"


class CountingEvaluate:
    """Stands in for lm_eval: writes a results file and counts which cells it evaluated."""

    def __init__(self, fail: set[str] = frozenset()):
        self.calls, self.fail = [], fail

    def __call__(self, cell, folder, log):
        self.calls.append(cell["id"])
        if cell["id"] in self.fail:
            raise RuntimeError(f"boom in {cell['id']}")
        out = folder / "results" / "model"
        out.mkdir(parents=True)
        (out / "results_1.json").write_text(json.dumps({"cell": cell["id"]}))


def _run(study: Path, spec_path: Path, evaluate) -> list[str]:
    spec = load_spec(spec_path)
    cells = make_plan(spec)
    write_plan(study, spec, cells)
    states = cell_states(study)
    LocalExecutor(evaluate).run(study, [c for c in cells if states[c["id"]] != "done"])
    return evaluate.calls


def test_checkpoint_series_in_step_order_and_resume(tmp_path, checkpoints):
    spec_path, study = _spec(tmp_path, CHECKPOINT_SPEC), tmp_path / "study"
    assert _run(study, spec_path, CountingEvaluate()) == ["student@0+none", "student@5+none", "student@10+none"]
    assert [c["axis"] for c in load_plan(study)] == [{"name": "step", "value": s} for s in (0, 5, 10)]
    assert set(cell_states(study).values()) == {"done"}
    assert _run(study, spec_path, CountingEvaluate()) == []  # a second run redoes nothing
    save_tiny_gpt2(checkpoints / "checkpoint-5", n_layer=1, seed=99)  # one member retrained: only its cell reruns
    assert _run(study, spec_path, CountingEvaluate()) == ["student@5+none"]
    (cell_dir(study, "student@10+none") / "record.json").unlink()  # a lost record: only that cell reruns
    assert _run(study, spec_path, CountingEvaluate()) == ["student@10+none"]
    # a changed cell setting (the limit) reruns every cell it touches, and drops their stale request cache
    cache = cell_dir(study, "student@0+none") / "lm_cache_rank0.db"
    cache.write_text("stale")
    spec_path.write_text(CHECKPOINT_SPEC.replace("limit: 2", "limit: 3"))
    assert len(_run(study, spec_path, CountingEvaluate())) == 3
    assert not cache.exists()


def test_failed_cell_is_reported_with_its_log_and_others_finish(tmp_path, checkpoints):
    spec_path, study = _spec(tmp_path, CHECKPOINT_SPEC), tmp_path / "study"
    evaluate = CountingEvaluate(fail={"student@5+none"})
    assert _run(study, spec_path, evaluate) == ["student@0+none", "student@5+none", "student@10+none"]
    assert cell_states(study) == {"student@0+none": "done", "student@5+none": "failed", "student@10+none": "done"}
    record = json.loads((cell_dir(study, "student@5+none") / "record.json").read_text())
    assert record["status"] == "failed" and record["error"] == "RuntimeError: boom in student@5+none"
    assert "boom in student@5+none" in (cell_dir(study, "student@5+none") / "cell.log").read_text()
    text = summary(study)
    assert f"log: {cell_dir(study, 'student@5+none') / 'cell.log'}" in text
    assert "2 done, 0 running, 1 failed, 0 left (of 3)" in text
    assert _run(study, spec_path, CountingEvaluate()) == ["student@5+none"]  # the next run retries it alone


@pytest.mark.parametrize("text, expected", [
    ("name: x\ntasks: [t]\nserise: []\n", "spec.yaml:3: serise: unknown key 'serise'; did you mean 'series'?"),
    ("name: x\ntasks: [t]\nseries:\n  - name: a\n    checkpoints: ck\n    revison: [step1]\n",
     "spec.yaml:6: series.0.revison: unknown key 'revison'; did you mean 'revisions'?"),
    ("name: x\ntasks: [t]\nlimit: -1\nseries: [{name: a, checkpoints: ck}]\n",
     "spec.yaml:3: limit: limit -1; write a positive number"),
    ("name: x\ntasks: [t]\nseries: [{name: a, checkpoints: ck}]\ncompressions:\n  - none\n"
     "  - {method: wanda, levels: [0.3, 1.5]}\n", "spec.yaml:6: compressions.1.levels.1: level 1.5 out of range"),
    ("name: x\ntasks: [t]\nseries: [{name: a, checkpoints: ck}]\ncompressions: [{method: int4}]\n",
     "spec.yaml:4: compressions.0.method: unknown compression method 'int4'"),
    ("name: x\ntasks: [t]\nseries:\n  - name: a\n    checkpoints: nowhere\n",
     "spec.yaml:5: series.0.checkpoints: "),
])
def test_bad_spec_is_refused_naming_the_line(tmp_path, checkpoints, text, expected):
    with pytest.raises(CompfairError) as refused:
        make_plan(load_spec(_spec(tmp_path, text)))
    assert expected in str(refused.value) and "\n" not in str(refused.value)


def test_model_that_cannot_load_is_refused(tmp_path, checkpoints):
    (checkpoints / "checkpoint-5" / "config.json").write_text("{not json")
    with pytest.raises(CompfairError, match=r"spec.yaml:6: series.0.checkpoints: model .*checkpoint-5 cannot be loaded .*; give a folder that save_pretrained wrote"):
        make_plan(load_spec(_spec(tmp_path, CHECKPOINT_SPEC)))


def test_missing_revision_is_refused_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = _hub_cache(tmp_path / "hub", {"step1000": 1})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    spec = _spec(tmp_path, "name: x\ntasks: [t]\nseries:\n  - name: p\n    model: tiny-org/tiny-pythia\n"
                           "    revisions: [step1000,\n                step2000]\n")
    with pytest.raises(CompfairError, match=r"spec.yaml:7: series.0.revisions.1: revision 'step2000' of "
                                            r"tiny-org/tiny-pythia does not exist here; the Hugging Face cache holds "
                                            r"step1000"):
        make_plan(load_spec(spec))


def _hub_cache(root: Path, revisions: dict[str, int]) -> Path:
    """A Hugging Face hub cache (refs/ + snapshots/) of tiny-org/tiny-pythia, one tiny model per revision
    (n_embd = 16 x the value, so each revision's parameter count tells it apart)."""
    repo = root / "models--tiny-org--tiny-pythia"
    for i, (revision, width) in enumerate(revisions.items()):
        commit = f"{i + 1:040x}"
        save_tiny_gpt2(repo / "snapshots" / commit, n_layer=1, n_head=2, n_embd=16 * width, seed=i)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / revision).write_text(commit)
    return root


def _parameters(width: int) -> int:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=1, n_head=2, n_embd=16 * width, n_positions=512, vocab_size=50257)
    return GPT2LMHeadModel(config).num_parameters()


@pytest.mark.slow
def test_offline_study_over_hub_revisions(tmp_path):
    """HF_HUB_OFFLINE=1: from_pretrained(id, revision=) and lm_eval --model_args revision= load each revision from
    the cache; the study evaluates every revision (its own model, told apart by parameter count), in step order."""
    widths = {"step3000": 3, "step1000": 1, "step2000": 2}  # listed out of order on purpose
    env = {**os.environ, **OFFLINE_ENV, "HF_HUB_CACHE": str(_hub_cache(tmp_path / "hub", widths)),
           "OMP_NUM_THREADS": "1"}
    loaded = subprocess.run([sys.executable, "-c", "from transformers import AutoModelForCausalLM as M\n"
                             "for r in ('step1000', 'step2000', 'step3000'):\n"
                             "    print(M.from_pretrained('tiny-org/tiny-pythia', revision=r).num_parameters())"],
                            env=env, capture_output=True, text=True, check=True)
    assert [int(n) for n in loaded.stdout.split()] == [_parameters(w) for w in (1, 2, 3)]
    spec = _spec(tmp_path, "name: revisions\ntasks: [compfair_crows_pairs]\nlimit: 2\nbatch_size: 2\nseries:\n"
                           "  - name: tiny-pythia\n    model: tiny-org/tiny-pythia\n"
                           "    revisions: [step3000, step1000, step2000]\n")
    done = subprocess.run([sys.executable, "-m", "compfair_tasks.cli", "study", "run", str(spec), "--output",
                           str(tmp_path / "study")], env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    plan = load_plan(tmp_path / "study")
    assert [c["id"] for c in plan] == [f"tiny-pythia@step{s}000+none" for s in (1, 2, 3)]
    for cell, width in zip(plan, (1, 2, 3), strict=True):
        results = json.loads(next((tmp_path / "study" / "cells" / cell["id"] / "results").rglob("results_*.json"))
                             .read_text())
        assert results["config"]["model_args"] == {"pretrained": "tiny-org/tiny-pythia", "revision": f"step{width}000"}
        assert results["config"]["model_num_parameters"] == _parameters(width)
        assert "crows_pairs" in json.dumps(results["results"])


def test_shipped_paper_specs_expand_to_the_papers_grids():
    pythia = make_plan(load_spec("pythia-quantization"), check=False)
    assert len(pythia) == 6 * 21 * 2
    steps = [c["axis"]["value"] for c in pythia if c["series"] == "pythia-6.9b-deduped" and
             c["compression"]["method"] == "none"]
    assert steps == [1000, 7000, 14000, 21000, 29000, 36000, 43000, 50000, 57000, 64000, 72000, 79000, 86000,
                     93000, 100000, 107000, 114000, 122000, 129000, 136000, 143000]
    gpt2 = {c["id"]: c for c in make_plan(load_spec("gpt2-distillation"), check=False)}
    assert [i for i in gpt2 if i.startswith("gpt2@")] == [
        "gpt2@gpt2+none", *(f"gpt2@gpt2+distill-{s}" for s in ("A", "B", "B_", "C", "D", "D_"))]
    assert gpt2["dialogpt@large+none"]["metadata"] == {"dialogue": True}
    assert gpt2["blenderbot@3B+none"]["model_args"] == "backend=seq2seq"
    assert gpt2["blenderbot@3B+none"]["gen_kwargs"] == "max_length=21"


def _results_and_samples(folder: Path) -> tuple[dict, list]:
    results = json.loads(next(folder.rglob("results_*.json")).read_text())
    samples = [json.loads(line) for path in sorted(folder.rglob("samples_*.jsonl")) for line in path.open()]
    return results, samples


@pytest.mark.slow
def test_in_process_evaluation_equals_the_lm_eval_cli(tmp_path, checkpoints):
    """The local executor evaluates in this interpreter; its results and per-doc samples equal `lm_eval run`'s."""
    spec_path = _spec(tmp_path, CHECKPOINT_SPEC.replace("[compfair_crows_pairs]",
                                                        "[compfair_crows_pairs, compfair_stereoset_intrasentence]"))
    spec = load_spec(spec_path)
    cells = make_plan(spec)[:1]
    for name, evaluate in (("inproc", cells_module.evaluate_in_process), ("cli", cells_module.evaluate_subprocess)):
        write_plan(tmp_path / name, spec, cells)
        record = cells_module.run_cell(tmp_path / name, cells[0]["id"], evaluate=evaluate)
        assert record["status"] == "done", (tmp_path / name / "cells" / cells[0]["id"] / "cell.log").read_text()[-3000:]
    (ours, our_samples), (theirs, their_samples) = (
        _results_and_samples(tmp_path / name / "cells" / cells[0]["id"] / "results") for name in ("inproc", "cli"))
    assert ours["results"] == theirs["results"]
    for key in ("model", "model_args", "model_num_parameters", "limit", "random_seed", "gen_kwargs"):
        assert ours["config"][key] == theirs["config"][key], key
    def without_addresses(configs):  # function reprs name their memory address: the one allowed difference
        return re.sub(r" at 0x[0-9a-f]+", "", json.dumps(configs, sort_keys=True))

    assert without_addresses(ours["configs"]) == without_addresses(theirs["configs"])
    key = ("doc_id", "filtered_resps", "target")
    assert len(our_samples) == len(their_samples) > 0
    assert [[s.get(k) for k in key] for s in our_samples] == [[s.get(k) for k in key] for s in their_samples]


def test_cli_refuses_a_bad_spec_in_one_line_with_exit_2(tmp_path, capsys):
    from compfair_tasks.cli import main

    spec = _spec(tmp_path, "name: x\ntasks: [t]\nserise: []\n")
    assert main(["study", "run", str(spec), "--output", str(tmp_path / "study")]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (f"compfair study run: error: {spec}:3: serise: unknown key 'serise'; did you mean 'series'?")
    assert not (tmp_path / "study").exists()  # refused before anything was written or run


def test_status_command_names_the_failed_cells_log(tmp_path, checkpoints, capsys):
    from compfair_tasks.cli import main

    study = tmp_path / "study"
    _run(study, _spec(tmp_path, CHECKPOINT_SPEC), CountingEvaluate(fail={"student@10+none"}))
    capsys.readouterr()
    assert main(["study", "status", str(study)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == (f"  failed   student@10+none  RuntimeError: boom in student@10+none; "
                        f"log: {cell_dir(study, 'student@10+none') / 'cell.log'}")
    assert lines[-1] == "2 done, 0 running, 1 failed, 0 left (of 3)"
