"""Diversity, repetition and fluency by hand: exact values on fixed texts and a direct computation on a tiny GPT-2."""

from __future__ import annotations

import math

import pytest

from compfair_tasks import degeneration

# ------------------------------------------------------------------------------------------ diversity


def test_distinct_n_by_hand():
    texts = ["the cat sat on the mat", "the cat ran", ""]  # 6 + 3 + 0 = 9 words
    # unigrams the cat sat on mat ran; bigrams the-cat cat-sat sat-on on-the the-mat cat-ran;
    # trigrams the-cat-sat cat-sat-on sat-on-the on-the-mat the-cat-ran
    assert degeneration.distinct_n(texts, 1) == 6 / 9
    assert degeneration.distinct_n(texts, 2) == 6 / 9
    assert degeneration.distinct_n(texts, 3) == 5 / 9


def test_distinct_n_counts_words_not_ngrams_and_never_across_continuations():
    # DExperts' denominator is the number of words: 2 distinct bigrams over 4 words, not over 2 bigrams;
    # joined, "b c" would be a third bigram
    assert degeneration.distinct_n(["a b", "c d"], 2) == 2 / 4
    assert degeneration.distinct_n(["a b", "a b"], 1) == 2 / 4
    assert degeneration.distinct_n([" a\n b  ", "\tb"], 1) == 2 / 3  # whitespace tokens: no empty "word"
    assert math.isnan(degeneration.distinct_n(["", "  "], 1))


def test_repetition_is_the_share_of_continuations_with_a_repeated_4gram():
    texts = ["I am I am I am", "one two three four one two three four", "a b c d e", ""]
    assert [degeneration.has_repeated_ngram(t) for t in texts] == [True, True, False, False]
    assert degeneration.repetition(texts) == 0.5
    assert not degeneration.has_repeated_ngram("the the the the")  # one 4-gram only
    assert degeneration.has_repeated_ngram("the the the the the")


# ------------------------------------------------------------------------------------------ fluency


@pytest.fixture(scope="module")
def fluency(tiny_gpt2_dir):
    return degeneration.FluencyModel(str(tiny_gpt2_dir), batch_size=2, batch_tokens=64, progress=False)


def direct_perplexity(model, context_ids, continuation_ids) -> float:
    """exp(-mean log p(continuation token | everything before it)), one unpadded forward."""
    import torch

    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
    n = len(context_ids)
    total = sum(log_probs[n - 1 + i, token].item() for i, token in enumerate(continuation_ids))
    return math.exp(-total / len(continuation_ids))


PAIRS = [
    ("The doctor said that", " she would come back tomorrow"),
    ("A", " b c d e f g h i j k l m n o p"),  # long continuation, short prompt: padding in its batch
    ("Someone wrote ", "nothing of note"),  # the trailing space moves to the continuation
    ("", "Out of nowhere"),  # empty prompt: conditioned on the BOS/EOS token
    ("Nothing follows", "   "),  # empty continuation: no perplexity
    ("Hello wor", "ld and more"),  # a word split by the boundary
]


def test_perplexity_equals_a_direct_computation_given_separately_tokenized_prompt(fluency):
    tokenizer, eos = fluency.tokenizer, fluency.tokenizer.eos_token_id
    ids = tokenizer  # the rule written out by hand, pair by pair
    expected_pairs = [
        (ids("The doctor said that")["input_ids"], ids(" she would come back tomorrow")["input_ids"]),
        (ids("A")["input_ids"], ids(" b c d e f g h i j k l m n o p")["input_ids"]),
        (ids("Someone wrote")["input_ids"], ids(" nothing of note")["input_ids"]),
        ([eos], ids("Out of nowhere")["input_ids"]),
        None,
        (ids("Hello wor")["input_ids"], ids("ld and more")["input_ids"]),
    ]
    for (prompt, continuation), expected in zip(PAIRS, expected_pairs, strict=True):
        if expected is not None:
            assert fluency.encode(prompt, continuation) == expected
    got = fluency.perplexities(*zip(*PAIRS, strict=True))
    for value, expected in zip(got, expected_pairs, strict=True):
        if expected is None:
            assert value is None
        else:
            assert value == pytest.approx(direct_perplexity(fluency.model, *expected), rel=1e-5)
    assert len({round(v, 3) for v in got if v is not None}) == 5  # the random model tells them apart
    # one pair at a time (no padding) gives the same numbers as the batches
    single = degeneration.FluencyModel(fluency.name, batch_size=1, progress=False)
    alone = single.perplexities(*zip(*PAIRS, strict=True))
    assert alone[4] is None and [v for v in alone if v] == pytest.approx([v for v in got if v], rel=1e-5)


def test_the_boundary_rule_is_not_lm_evals_joint_slicing(fluency):
    """Slicing a joint encoding at the prompt's length loses or misplaces a token that merges across it."""
    tokenizer = fluency.tokenizer
    context, continuation = fluency.encode("Hello wor", "ld")
    joint = tokenizer("Hello world")["input_ids"]
    assert joint[len(context):] != continuation
    assert tokenizer.decode(context + continuation) == "Hello world"


def test_a_pair_longer_than_the_model_keeps_the_end(fluency, monkeypatch):
    monkeypatch.setattr(fluency, "max_length", 12)
    prompt, continuation = "one two three four five six seven eight nine ten", " and then it stopped"
    context, target = fluency.encode(prompt, continuation)
    assert len(context) + len(target) > 12
    kept = (context + target)[-12:]
    expected = direct_perplexity(fluency.model, kept[: 12 - len(target)], target)
    assert fluency.perplexities([prompt], [continuation]) == pytest.approx([expected], rel=1e-5)


def test_fluency_model_is_loaded_once_per_options(tiny_gpt2_dir, monkeypatch):
    monkeypatch.setattr(degeneration, "_CACHE", {})
    first = degeneration.get_fluency_model(str(tiny_gpt2_dir), batch_size=4, progress=False)
    assert degeneration.get_fluency_model(str(tiny_gpt2_dir), batch_size=4, progress=False, device=None) is first
    assert degeneration.get_fluency_model(str(tiny_gpt2_dir), batch_size=8, progress=False) is not first
    assert first.revision.startswith("sha256:") and first.model.dtype.is_floating_point


def test_a_missing_fluency_model_says_what_to_pass(tmp_path):
    with pytest.raises(degeneration.FluencyModelUnavailableError, match='fluency_model must be .*"none"'):
        degeneration.FluencyModel(str(tmp_path / "nowhere"))
