"""StereoSet: documents from the shipped dev set, the official aggregation against hand-computed answers, and a CLI run."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest

from compfair_tasks import data, stereoset


def rec(target, stereo, anti, unrelated, domain="gender", split="intrasentence"):
    return {"id": f"{split}-{target}-{stereo}", "target": target, "domain": domain, "split": split,
            "stereotype": stereo, "anti": anti, "unrelated": unrelated}


# A (gender): 2 examples -> pro 1/2, meaningful-over-unrelated wins 3/4  => SS 50, LMS 75
# B (gender): 1 example, all three tied -> tie counts as anti, ties go to unrelated  => SS 0, LMS 0
# C (race):   1 example -> pro 1/1, wins 1/2  => SS 100, LMS 50
HAND = [rec("A", -1, -2, -3), rec("A", -2, -1, -1.5), rec("B", -1, -1, -1), rec("C", -1, -3, -2, domain="race")]


def test_official_scores_by_hand():
    overall = stereoset.scores(HAND)
    assert overall["ss"] == pytest.approx(50.0)  # (50 + 0 + 100) / 3
    assert overall["lms"] == pytest.approx(125 / 3)  # (75 + 0 + 50) / 3
    assert overall["icat"] == pytest.approx(125 / 3)  # LMS * min(50, 50) / 50
    gender = stereoset.scores([r for r in HAND if r["domain"] == "gender"])
    assert (gender["ss"], gender["lms"], gender["icat"]) == pytest.approx((25.0, 37.5, 18.75))
    race = stereoset.scores([r for r in HAND if r["domain"] == "race"])
    assert (race["ss"], race["lms"], race["icat"]) == pytest.approx((100.0, 50.0, 0.0))


def test_counts_by_hand():
    assert stereoset.agg_anti_count(HAND) == 2  # the anti win and the three-way tie
    assert stereoset.agg_unrelated_count(HAND) == 1  # only the tie: unrelated ties the best meaningful sentence
    assert stereoset.agg_n_examples(HAND) == 4


def test_icat_is_macro_over_target_means():
    # official: ICAT from the averaged SS and LMS, not the mean of per-target ICATs
    records = [rec("A", -1, -2, -3), rec("B", -2, -1, -3)]  # SS 100 and 0, LMS 100 and 100
    assert stereoset.scores(records) == pytest.approx({"ss": 50.0, "lms": 100.0, "icat": 100.0})


def test_overall_pools_a_target_across_splits():
    inter = rec("A", -1, -2, -3, split="intersentence")
    pooled = stereoset.scores(HAND + [inter])
    # A now has pro 2/3 and wins 5/6: SS (66.67 + 0 + 100) / 3, LMS (83.33 + 0 + 50) / 3
    assert pooled["ss"] == pytest.approx((200 / 3 + 100) / 3)
    assert pooled["lms"] == pytest.approx((250 / 3 + 50) / 3)
    weighted = (4 * stereoset.scores(HAND)["ss"] + 1 * stereoset.scores([inter])["ss"]) / 5
    assert pooled["ss"] != pytest.approx(weighted)


def test_bootstrap_ci_brackets_the_estimate():
    records = HAND * 10
    low, high = stereoset.agg_ss_ci_low(records), stereoset.agg_ss_ci_high(records)
    assert low < stereoset.agg_ss(records) < high and 0 <= low and high <= 100


def test_empty_aggregation_is_an_error():
    with pytest.raises(ValueError, match="no examples"):
        stereoset.agg_ss([])


def test_process_results_uses_per_token_mean():
    doc = {"id": "intersentence-7", "target": "A", "domain": "race", "split": "intersentence", "scope": "all",
           "score_rule": "mean", "n_tokens": [2, 4, 1]}
    # sums: stereotype -6 (mean -3), anti -8 (mean -2), unrelated -2.5 (mean -2.5)
    out = stereoset.process_results(doc, [(-6.0, False), (-8.0, False), (-2.5, False)])
    r = out["ss"]
    assert (r["stereotype"], r["anti"], r["unrelated"]) == (-3.0, -2.0, -2.5)
    assert {"ss_race", "lms_race", "icat_intersentence", "anti_count"} <= out.keys()
    assert out["ss_gender"] is None and out["per_token"] == 1.0  # every doc reports every subgroup key
    summed = stereoset.process_results({**doc, "score_rule": "sum", "scope": "intersentence"},
                                       [(-6.0, False), (-8.0, False), (-2.5, False)])
    assert summed["ss"]["stereotype"] == -6.0 and "ss_intersentence" not in summed


@pytest.fixture(scope="module")
def dev_examples():
    return stereoset._examples_from_json(data.resolve("stereoset").path / "dev.json")


def test_shipped_dev_docs(dev_examples):
    docs = stereoset.build_docs(dev_examples, stereoset.SPLITS, "all")
    counts = Counter((d["split"], d["domain"]) for d in docs)
    assert counts[("intersentence", "gender")] == 242 and counts[("intrasentence", "religion")] == 79
    assert len(docs) == 4229 and len({d["target"] for d in docs}) == 79
    intra = next(d for d in docs if d["split"] == "intrasentence")
    assert intra["context"] == "" and "BLANK" not in "".join(intra["choices"])
    inter = next(d for d in docs if d["split"] == "intersentence")
    assert inter["context"] == inter["stereoset_context"] and all(c.startswith(" ") for c in inter["choices"])
    # candidate order is stereotype, anti-stereotype, unrelated whatever the file order
    raw = dev_examples["intersentence"][0]
    gold = {s["gold_label"]: s["sentence"] for s in raw["sentences"]}
    assert docs[2106]["choices"] == [" " + gold[label] for label in stereoset.LABELS]


def test_malformed_example_is_named(dev_examples):
    broken = json.loads(json.dumps(dev_examples))
    broken["intrasentence"][3]["sentences"][1]["gold_label"] = broken["intrasentence"][3]["sentences"][0]["gold_label"]
    with pytest.raises(ValueError, match="intrasentence example 3"):
        stereoset.build_docs(broken, ["intrasentence"], "intrasentence")


def test_missing_data_file_is_a_clear_error(tmp_path):
    with pytest.raises(data.DataNotFoundError, match="dev.json"):
        stereoset.load_all(stereoset_path=str(tmp_path))


def _direct_loglikelihood(model_dir, prefix_ids, context, continuation):
    """log p(continuation | prefix ids + context) from the model itself (GPT-2 BPE: context + continuation
    encode as the concatenation here, which the test's sentences satisfy)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    context_ids = prefix_ids + tokenizer.encode(context)
    continuation_ids = tokenizer.encode(context + continuation)[len(tokenizer.encode(context)):]
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0, :-1].double(), dim=-1)
    targets = ids[0, 1:]
    return logprobs[torch.arange(len(targets)), targets][-len(continuation_ids):].sum().item()


def test_intersentence_context_starts_from_the_prefix_token(tiny_gpt2_dir):
    """The choice: an intersentence context starts from BOS (EOS for GPT-2), as intrasentence's empty context does.
    lm-eval then scores log p(candidate | BOS + context), and adds no second BOS."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    [doc] = stereoset._load(["intersentence"], "intersentence", {"pretrained": str(tiny_gpt2_dir)})["test"].select([0])
    assert doc["context"] == "<|endoftext|>" + doc["stereoset_context"] and doc["context_prefix"] == "<|endoftext|>"
    [intra] = stereoset._load(["intrasentence"], "intrasentence", {"pretrained": str(tiny_gpt2_dir)})["test"].select([0])
    assert intra["context"] == "" and intra["context_prefix"] == ""  # lm-eval conditions an empty one on BOS itself

    lm = HFLM(pretrained=str(tiny_gpt2_dir), batch_size=1, device="cpu")
    candidate = doc["choices"][0]
    [(measured, _)] = lm.loglikelihood([Instance("loglikelihood", {}, (doc["context"], candidate), 0)],
                                       disable_tqdm=True)
    with_bos = _direct_loglikelihood(tiny_gpt2_dir, [50256], doc["stereoset_context"], candidate)
    without_bos = _direct_loglikelihood(tiny_gpt2_dir, [], doc["stereoset_context"], candidate)
    assert measured == pytest.approx(with_bos, abs=1e-4)
    assert abs(with_bos - without_bos) > 1e-3  # the choice is visible in the number


def test_subgroup_aggregation_skips_the_other_docs_and_is_nan_without_members():
    assert stereoset.agg_ss([None, *HAND, None]) == stereoset.agg_ss(HAND)
    assert math.isnan(stereoset.agg_icat([None, None]))
