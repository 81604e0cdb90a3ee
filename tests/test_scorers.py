"""Scorers: the real Detoxify load/predict path on a tiny checkpoint, offline errors, profanity-check."""

from __future__ import annotations

import pytest
from toxicity_helpers import save_tiny_detoxify

from compfair_tasks import scorers

TEXTS = ["you are a wonderful person", "", "idiot", "   ", "a considerably longer sentence, so that batches "
         "of sorted texts pad differently from one call over everything", "ok", "what a stupid idea that was"]


@pytest.fixture(scope="module")
def detoxify_dir(tmp_path_factory):
    return save_tiny_detoxify(tmp_path_factory.mktemp("detoxify"))


@pytest.fixture
def fresh_scorers(monkeypatch):
    monkeypatch.setattr(scorers, "_LOADED", {})


def test_batched_scores_equal_detoxify_predict_per_text(detoxify_dir, monkeypatch, fresh_scorers):
    from detoxify import Detoxify

    monkeypatch.setenv(scorers.CHECKPOINT_ENV, str(detoxify_dir))
    scorer = scorers.get_scorer("detoxify-original", batch_size=2, progress=False, device="cpu")
    got = scorer.score(TEXTS)

    checkpoint = next(detoxify_dir.glob("toxic_original-*.ckpt"))
    reference = Detoxify(checkpoint=str(checkpoint), huggingface_config_path=str(detoxify_dir))
    for text, score in zip(TEXTS, got, strict=True):
        expected = reference.predict(text)["toxicity"] if text.strip() else 0.0
        assert score == pytest.approx(expected, abs=1e-5), text
    assert len(set(round(s, 4) for s in got if s)) > 3  # the tiny model tells texts apart
    assert scorer.name == "detoxify-original"
    assert scorers.get_scorer("detoxify") is scorer  # loaded once per process


def test_batches_are_length_sorted_and_bounded():
    scorer = scorers.DetoxifyScorer.__new__(scorers.DetoxifyScorer)  # batching needs no model
    scorer.batch_size, scorer.batch_tokens = 3, 9
    # sorted: #1 (1 token), #2 (3), #3 (3), #0 (5), #4 (10); 3 texts of 3 pad to 9 tokens; #0 hits the size cap;
    # #4 alone exceeds the token budget and still gets its own batch
    assert scorer.batches([5, 1, 3, 3, 10]) == [[1, 2, 3], [0], [4]]


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


def test_scorer_names():
    assert scorers.canonical_name(None) == "detoxify-original"
    assert scorers.canonical_name("profanity_check") == "profanity-check"
    assert scorers.canonical_name("Detoxify-Multilingual") == "detoxify-multilingual"
    with pytest.raises(ValueError, match="perspective"):
        scorers.canonical_name("perspective")


def test_profanity_check_scores_offline(fresh_scorers):
    scorer = scorers.get_scorer("profanity_check")
    clean, empty, rude = scorer.score(["thank you for the lovely afternoon", " ", "fuck you, you stupid shit"])
    assert scorer.name == "profanity-check"
    assert empty == 0.0
    assert rude > 0.9 > 0.2 > clean
