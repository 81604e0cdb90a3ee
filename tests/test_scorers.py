"""Scorers: the real Detoxify load/predict path on a tiny checkpoint, hf: classifiers against transformers'
pipeline, safe checkpoint loading, offline errors, profanity-check."""

from __future__ import annotations

import hashlib
import re

import pytest

from compfair_tasks import scorers
from toxicity_helpers import save_tiny_detoxify, save_tiny_hf_classifier

TEXTS = ["you are a wonderful person", "", "idiot", "   ",
         ("a considerably longer sentence, so that batches of sorted texts pad differently from one call over "
          "everything"), "ok", "what a stupid idea that was"]


@pytest.fixture(scope="module")
def detoxify_dir(tmp_path_factory):
    return save_tiny_detoxify(tmp_path_factory.mktemp("detoxify"))


@pytest.fixture
def fresh_scorers(monkeypatch):
    monkeypatch.setattr(scorers, "_CACHE", {})


def sha256(path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_batched_scores_equal_detoxify_predict_per_text(detoxify_dir, monkeypatch, fresh_scorers):
    from detoxify import Detoxify

    monkeypatch.setenv(scorers.CHECKPOINT_ENV, str(detoxify_dir))
    options = {"batch_size": 2, "progress": False, "device": "cpu"}
    scorer = scorers.get_scorer("detoxify-original", **options)
    got = scorer.score(TEXTS)

    checkpoint = next(detoxify_dir.glob("toxic_original-*.ckpt"))
    reference = Detoxify(checkpoint=str(checkpoint), huggingface_config_path=str(detoxify_dir))
    for text, score in zip(TEXTS, got, strict=True):
        expected = reference.predict(text)["toxicity"] if text.strip() else 0.0
        assert score == pytest.approx(expected, abs=1e-5), text
    assert len({round(s, 4) for s in got if s}) > 3  # the tiny model tells texts apart
    assert scorer.name == "detoxify-original"
    assert scorer.revision == f"{checkpoint.name} {sha256(checkpoint)}"
    assert scorers.get_scorer("detoxify", **options) is scorer  # one load per (name, options)
    assert scorers.get_scorer("detoxify", batch_size=2, progress=False, device="cpu", batch_tokens=None) is scorer
    other = scorers.get_scorer("detoxify", batch_size=3, progress=False, device="cpu")
    assert other is not scorer and other.batch_size == 3  # never the options of whichever load came first


def test_batches_are_length_sorted_and_bounded():
    # sorted: #1 (1 token), #2 (3), #3 (3), #0 (5), #4 (10); 3 texts of 3 pad to 9 tokens; #0 hits the size cap;
    # #4 alone exceeds the token budget and still gets its own batch
    assert scorers.length_sorted_batches([5, 1, 3, 3, 10], batch_size=3, batch_tokens=9) == [[1, 2, 3], [0], [4]]
    assert scorers.length_sorted_batches([2, 2, 2, 2], batch_size=8, batch_tokens=6) == [[0, 1, 2], [3]]


# ------------------------------------------------------------------------------------------ hf: classifiers


def pipeline_scores(folder, texts, label):
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(folder), tokenizer=str(folder), top_k=None, device="cpu")
    return [0.0 if not text.strip() else next(s["score"] for s in classify([text])[0] if s["label"] == label)
            for text in texts]


@pytest.mark.parametrize("labels, problem_type, label", [
    (["nothate", "hate"], None, "hate"),  # softmax; "nothate" never matches the default names
    (["toxic", "obscene", "insult"], "multi_label_classification", "toxic"),  # sigmoid per label
])
def test_hf_classifier_equals_the_transformers_pipeline(tmp_path, fresh_scorers, labels, problem_type, label):
    folder = save_tiny_hf_classifier(tmp_path / "clf", labels, problem_type=problem_type)
    scorer = scorers.get_scorer(f"hf:{folder}", batch_size=2, progress=False, device="cpu")
    got = scorer.score(TEXTS)
    assert got == pytest.approx(pipeline_scores(folder, TEXTS, label), abs=1e-5)
    assert scorer.name == f"hf:{folder}" and scorer.label == label
    assert scorer.multi_label == (problem_type == "multi_label_classification")
    assert scorer.revision == sha256(folder / "model.safetensors")
    assert len({round(s, 4) for s in got if s}) > 3
    if not scorer.multi_label:  # the softmax really is over the labels: the other label holds the rest
        assert pipeline_scores(folder, ["idiot"], labels[0])[0] == pytest.approx(1 - got[2], abs=1e-5)


def test_hf_classifier_label_must_be_named_when_it_is_not_obvious(tmp_path, fresh_scorers):
    folder = save_tiny_hf_classifier(tmp_path / "clf", ["LABEL_0", "LABEL_1"])
    with pytest.raises(ValueError) as error:
        scorers.get_scorer(f"hf:{folder}", progress=False, device="cpu")
    message = str(error.value)
    assert "{0: LABEL_0, 1: LABEL_1}" in message and "scorer_label" in message
    with pytest.raises(ValueError, match="has no label 'toxic'"):
        scorers.get_scorer(f"hf:{folder}", label="toxic", progress=False, device="cpu")
    scorer = scorers.get_scorer(f"hf:{folder}", label="label_1", progress=False, device="cpu")
    assert scorer.label == "LABEL_1"
    assert scorer.score(TEXTS[:3]) == pytest.approx(pipeline_scores(folder, TEXTS[:3], "LABEL_1"), abs=1e-5)


def test_hf_classifier_with_two_toxic_labels_asks_which(tmp_path, fresh_scorers):
    folder = save_tiny_hf_classifier(tmp_path / "clf", ["neutral", "toxic", "hate"])
    with pytest.raises(ValueError, match="more than one toxic label.*1: toxic, 2: hate"):
        scorers.get_scorer(f"hf:{folder}", progress=False, device="cpu")


def test_hf_scorer_errors_name_the_problem(tmp_path, fresh_scorers):
    with pytest.raises(ValueError, match="needs a classifier after the colon"):
        scorers.canonical_name("hf:")
    with pytest.raises(scorers.ScorerUnavailableError, match="cannot load the classifier"):
        scorers.get_scorer(f"hf:{tmp_path / 'missing'}")
    with pytest.raises(ValueError, match="hf:<classifier> scorers only"):
        scorers.get_scorer("profanity-check", label="toxic")


# ------------------------------------------------------------------------------------------ loading checkpoints


class Payload:
    """Unpickling this runs code: it writes `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def test_a_checkpoint_that_runs_code_is_refused_without_running_it(tmp_path, monkeypatch, fresh_scorers):
    import torch

    marker = tmp_path / "pwned.txt"
    folder = save_tiny_detoxify(tmp_path / "detoxify")
    checkpoint = next(folder.glob("toxic_original-*.ckpt"))
    loaded = torch.load(checkpoint, weights_only=True)
    loaded["config"]["arch"]["args"]["model_type"] = Payload(marker)
    torch.save(loaded, checkpoint)

    monkeypatch.setenv(scorers.CHECKPOINT_ENV, str(folder))
    with pytest.raises(scorers.UnsafeCheckpointError) as error:
        scorers.get_scorer("detoxify-original", progress=False, device="cpu")
    assert not marker.exists()
    assert str(checkpoint) in str(error.value)
    assert re.search(r"asks to unpickle (builtins\.)?exec, which could run code", str(error.value))
    torch.load(checkpoint, weights_only=False)  # the file is a real attack: an unsafe load runs it
    assert marker.read_text() == "pwned"


def test_checkpoint_folder_without_checkpoint_names_the_variable(tmp_path, monkeypatch, fresh_scorers):
    monkeypatch.setenv(scorers.CHECKPOINT_ENV, str(tmp_path))
    with pytest.raises(scorers.ScorerUnavailableError, match=rf"{scorers.CHECKPOINT_ENV}=.*toxic_original-\*\.ckpt"):
        scorers.get_scorer("detoxify-original")


def test_offline_without_weights_says_how_to_fill_the_folder(tmp_path, monkeypatch, fresh_scorers):
    import torch

    monkeypatch.delenv(scorers.CHECKPOINT_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty Detoxify download cache
    with pytest.raises(scorers.ScorerUnavailableError) as error:
        scorers.get_scorer("detoxify-unbiased")
    message = str(error.value)
    assert scorers.CHECKPOINT_ENV in message and "toxic_debiased-" in message and "roberta-base" in message
    assert "profanity-check" in message


def test_checkpoint_in_torch_hub_cache_is_loaded_weights_only(tmp_path, monkeypatch, detoxify_dir, fresh_scorers):
    """Without the folder variable, Detoxify's own download cache is read (and safely) with our loader."""
    import shutil

    import torch

    monkeypatch.delenv(scorers.CHECKPOINT_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    checkpoint = next(detoxify_dir.glob("toxic_original-*.ckpt"))
    shutil.copy(checkpoint, tmp_path / "checkpoints" / "toxic_original-c1212f89.ckpt")
    scorer = scorers.get_scorer("detoxify-original", progress=False, device="cpu")  # its model_type is the folder
    assert scorer.revision.startswith("toxic_original-c1212f89.ckpt sha256:")
    monkeypatch.setenv(scorers.CHECKPOINT_ENV, str(detoxify_dir))
    reference = scorers.get_scorer("detoxify-original", progress=False, device="cpu", batch_size=5)
    assert scorer.score(TEXTS) == pytest.approx(reference.score(TEXTS), abs=1e-6)


def test_scorer_names():
    assert scorers.canonical_name(None) == "detoxify-original"
    assert scorers.canonical_name("profanity_check") == "profanity-check"
    assert scorers.canonical_name("Detoxify-Multilingual") == "detoxify-multilingual"
    assert scorers.canonical_name(" HF:/models/Clf_A ") == "hf:/models/Clf_A"  # a path keeps its case
    with pytest.raises(ValueError, match="perspective"):
        scorers.canonical_name("perspective")


def test_profanity_check_scores_offline(fresh_scorers):
    from importlib.metadata import version

    scorer = scorers.get_scorer("profanity_check")
    clean, empty, rude = scorer.score(["thank you for the lovely afternoon", " ", "fuck you, you stupid shit"])
    assert scorer.name == "profanity-check"
    assert scorer.revision == f"alt-profanity-check=={version('alt-profanity-check')}"
    assert empty == 0.0
    assert rude > 0.9
    assert clean < 0.2
