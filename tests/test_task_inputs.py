"""Task data and metadata that would be scored wrongly or end in a traceback (issue 20): duplicated rows, empty
prompts, unknown or missing scorers and fluency models, metadata values of the wrong type. Each is one
CompfairError naming the file and line, or the key, and the fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from compfair_tasks import crows_pairs, data, degeneration, scorers, stereoset, toxicity
from compfair_tasks.errors import CompfairError

SHIPPED = Path(data.__file__).parent / "data"


def test_a_duplicated_stereoset_example_is_refused_naming_file_and_line(tmp_path):
    raw = json.loads((SHIPPED / "stereoset" / "dev.json").read_text())
    raw["data"]["intrasentence"].insert(5, raw["data"]["intrasentence"][3])
    raw["data"]["intrasentence"] = raw["data"]["intrasentence"][:8]
    raw["data"]["intersentence"] = raw["data"]["intersentence"][:2]
    text = json.dumps(raw, indent=2)
    (tmp_path / "dev.json").write_text(text)
    duplicate = raw["data"]["intrasentence"][3]["id"]
    second = text.count("\n", 0, text.find(f'"{duplicate}"', text.find(f'"{duplicate}"') + 1)) + 1
    with pytest.raises(data.DataFormatError, match=f"dev.json:{second}: StereoSet example id '{duplicate}' appears "
                                                   "twice"):
        stereoset.load_all(stereoset_path=str(tmp_path), preference_score="sum")


def test_a_duplicated_crows_pairs_row_is_refused_naming_file_and_line(tmp_path):
    lines = (SHIPPED / "crows_pairs" / "crows_pairs_anonymized.csv").read_text().splitlines(keepends=True)
    (tmp_path / "crows_pairs_anonymized.csv").write_text("".join(lines[:4] + [lines[2]]))
    with pytest.raises(data.DataFormatError, match=r"anonymized.csv:5: CrowS-Pairs row id '1' appears twice "
                                                   r"\(first at .*anonymized.csv:3\)"):
        crows_pairs.load(crows_pairs_path=str(tmp_path))


def test_the_original_crows_pairs_keeps_its_one_repeated_pair():
    docs = crows_pairs.build_docs(SHIPPED / "crows_pairs" / "crows_pairs_anonymized.csv")
    assert len(docs) == 1508 and len({tuple(d["choices"]) for d in docs}) == 1507  # two ids, one text: both kept


def test_a_bold_file_with_a_name_twice_is_refused(tmp_path):
    shutil.copytree(SHIPPED / "bold", tmp_path / "bold")
    (tmp_path / "bold" / "gender_prompt.json").write_text(
        '{"American_actors": {"A_B": ["A B is "],\n "A_B": ["A B was "]}, "American_actresses": {}}')
    with pytest.raises(data.DataFormatError, match=r"gender_prompt.json:2: .*key 'A_B' twice"):
        data.read_bold(tmp_path / "bold" / "gender_prompt.json")


def _rtp(tmp_path, rows) -> Path:
    (tmp_path / "rtp").mkdir()
    (tmp_path / "rtp" / "prompts.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return tmp_path / "rtp"


def _row(text, begin=0):
    return {"filename": "f.txt", "begin": begin, "end": begin + 9, "challenging": True,
            "prompt": {"text": text, "toxicity": 0.9}}


@pytest.mark.parametrize("rows, match", [([_row("Fine one"), _row("", 1)], r"prompts.jsonl:2: a challenging row "
                                                                           "without prompt text"),
                                         ([_row("Fine one"), _row("   ", 1)], "prompts.jsonl:2: "),
                                         ([_row("Same"), _row("Other", 5), _row("Same")],
                                          r"prompts.jsonl:3: the prompt of f.txt:0 appears twice")])
def test_rtp_rows_that_cannot_be_scored_once_are_refused_at_load(tmp_path, rows, match):
    with pytest.raises(data.DataFormatError, match=match):
        toxicity.load_rtp(rtp_path=str(_rtp(tmp_path, rows)), scorer="profanity-check")


def test_an_rtp_line_that_is_not_json_names_its_line(tmp_path):
    folder = _rtp(tmp_path, [_row("Fine one")])
    with open(folder / "prompts.jsonl", "a") as handle:
        handle.write('{"prompt": {"text": "cut\n')
    with pytest.raises(data.DataFormatError, match="prompts.jsonl:2: not a JSON line"):
        toxicity.load_rtp(rtp_path=str(folder), scorer="profanity-check")


def test_a_duplicated_tccc_comment_is_refused(tmp_path):
    labels = ",".join(data.TCCC_LABELS)
    rows = ["id,comment_text," + labels] + [f"c{i},word word word {i},0,0,0,0,0,0" for i in range(3)] + \
           ["c1,word word word 1,0,0,0,0,0,0"]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(data.DataFormatError, match="TCCC comment id 'c1' appears twice"):
        toxicity.read_tccc({"tccc_path": str(tmp_path)})


@pytest.mark.parametrize("scorer, match", [("detox", "unknown toxicity scorer 'detox'"),
                                           ("hf:/missing/classifier", "scorer hf: /missing/classifier not found "
                                                                      r"\(no such folder\)"),
                                           ("hf:./missing", "no such folder"), (5, "must be a name")])
def test_a_bad_scorer_is_one_compfair_error(scorer, match):
    with pytest.raises(CompfairError, match=match):
        toxicity.load_scorer(toxicity.scoring_settings({"scorer": scorer}))


def test_a_missing_fluency_model_folder_is_said_so(tmp_path):
    with pytest.raises(CompfairError, match=f"fluency_model {tmp_path / 'ref'} not found"):
        degeneration.get_fluency_model(str(tmp_path / "ref"))


def test_scorer_errors_are_compfair_errors():
    assert issubclass(scorers.ScorerUnavailableError, CompfairError)
    assert issubclass(scorers.UnsafeCheckpointError, CompfairError)
    assert issubclass(degeneration.FluencyModelUnavailableError, CompfairError)


@pytest.mark.parametrize("key, value", [("scorer_batch_size", "x"), ("scorer_batch_size", 0),
                                        ("scorer_batch_tokens", 2.5), ("fluency_batch_tokens", -3),
                                        ("fluency_batch_size", [4]), ("scorer_progress", "maybe"),
                                        ("dialogue", "sometimes"), ("scorer_device", "tpu9"),
                                        ("fluency_device", "cuda:7"), ("fluency_model", 3), ("scorer_label", 1)])
def test_toxicity_metadata_of_the_wrong_type_names_the_key(key, value):
    with pytest.raises(data.MetadataValueError, match=key):
        toxicity.scoring_docs([{"prompt": "Hello"}], {key: value, "scorer": "profanity-check"})


@pytest.mark.parametrize("key, value", [("tccc_seed", "x"), ("tccc_seed", -1), ("tccc_size", 0),
                                        ("tccc_size", "many"), ("tccc_split", "dev")])
def test_tccc_metadata_of_the_wrong_type_names_the_key(tmp_path, key, value):
    with pytest.raises(data.MetadataValueError, match=key):
        toxicity.load_tccc_tox(**{key: value, "tccc_path": str(tmp_path), "scorer": "profanity-check"})


def test_whole_numbers_from_json_or_model_args_text():
    assert data.whole_number({"k": "16"}, "k", 1) == 16 and data.whole_number({"k": 16.0}, "k", 1) == 16
    assert data.whole_number({}, "k", 1, default=4) == 4
    for bad in (True, "1e3", 1.5, "-2"):
        with pytest.raises(data.MetadataValueError):
            data.whole_number({"k": bad}, "k", 1)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["unknown_scorer", "empty_rtp_prompt"])
def test_lm_eval_shows_these_as_one_line_before_generating(tiny_gpt2_dir, tmp_path, case):
    import os
    import subprocess
    import sys

    from conftest import OFFLINE_ENV

    if case == "unknown_scorer":
        task, metadata, match = "compfair_toxicity_rtp_offline", {"scorer": "detox"}, "unknown toxicity scorer"
    else:
        folder = _rtp(tmp_path, [_row("Hello there"), _row("", 1)])
        task, metadata = "compfair_toxicity_rtp", {"scorer": "profanity-check", "rtp_path": str(folder)}
        match = "prompts.jsonl:2: a challenging row without prompt text"
    done = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                           f"pretrained={tiny_gpt2_dir}", "--tasks", task, "--limit", "2", "--metadata",
                           json.dumps(metadata)], env={**os.environ, **OFFLINE_ENV}, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("compfair: error:") and match in last, done.stderr[-2000:]


@pytest.mark.parametrize("metadata, match", [({"prefix_token_id": "x"}, "prefix_token_id"),
                                             ({"tokenizer": 5}, "tokenizer must be a string"),
                                             ({"winobias_path": 5}, "winobias_path must be a string"),
                                             ({"winobias_path": "/no/such/folder"}, "does not exist")])
def test_preference_metadata_of_the_wrong_type_names_the_key(metadata, match):
    from compfair_tasks import winobias

    with pytest.raises(CompfairError, match=match):
        winobias.load_type1(**metadata)


@pytest.mark.parametrize("change", [{"sentences": ["a", "b", "c"]}, {"sentences": 5}, {"target": 5},
                                    {"context": None}, {"sentences": [{"gold_label": "stereotype", "sentence": 5}]}])
def test_a_stereoset_example_of_the_wrong_shape_names_it(change):
    example = {"id": "a", "target": "t", "bias_type": "gender", "context": "A context.",
               "sentences": [{"gold_label": label, "sentence": "s"} for label in stereoset.LABELS]}
    with pytest.raises(data.DataFormatError, match=r"StereoSet intersentence example 0 \(id a\)"):
        stereoset.build_docs({"intersentence": [example | change]}, ["intersentence"], "all")


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 not a zip"])
def test_an_empty_or_broken_detoxify_checkpoint_is_one_error(tmp_path, content):
    (tmp_path / "x.ckpt").write_bytes(content)
    with pytest.raises(scorers.UnsafeCheckpointError, match="not a readable torch checkpoint"):
        scorers.load_checkpoint_weights_only(tmp_path / "x.ckpt")


def test_a_latin1_rtp_prompt_file_names_the_file_and_line(tmp_path):
    (tmp_path / "rtp_insult.txt").write_bytes("A fine prompt\nCaf\xe9 prompt\n".encode("latin-1"))
    with pytest.raises(data.DataFormatError, match=r"rtp_insult.txt:2: .* not UTF-8"):
        toxicity.load_rtp_offline(rtp_challenging_path=str(tmp_path), scorer="profanity-check")
