"""Every compfair task: the keys its process_results emits are exactly the YAML's metric_list.

lm-eval aggregates an emitted key that the metric_list does not name with a silent `mean`, and reports
nothing for a listed key that is never emitted (lm_eval/evaluator_utils.py aggregates only the emitted
keys); both are bugs this test finds, with one exception, named below. Each task is built by
lm-eval itself (its YAML, includes and loaders), on the shipped data plus a fabricated RTP/TCCC folder,
and its own process_results runs on fabricated results of the task's output type.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

TOXICITY_SCORER = {"scorer": "profanity-check"}  # offline; the keys do not depend on the scorer


@pytest.fixture(scope="module")
def compfair_tasks(tmp_path_factory):
    """{name: lm-eval task object} of every compfair task (not groups), built as lm_eval builds them."""
    from lm_eval.tasks import TaskManager, get_task_dict

    root = tmp_path_factory.mktemp("data")
    (root / "rtp").mkdir()
    (root / "rtp" / "prompts.jsonl").write_text("".join(
        json.dumps({"prompt": {"text": f"Prompt number {i} says", "toxicity": 0.9}, "challenging": True}) + "\n"
        for i in range(3)))
    (root / "tccc").mkdir()
    labels = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")
    rows = [f"c{i},comment number {i} is here," + ",".join("1" if i % 2 and j == 0 else "0" for j in range(6))
            for i in range(6)]
    (root / "tccc" / "train.csv").write_text("id,comment_text," + ",".join(labels) + "\n" + "\n".join(rows) + "\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COMPFAIR_DATA_DIR", str(root))
        manager = TaskManager(metadata={**TOXICITY_SCORER, "tccc_size": 2, "preference_score": "sum"})
        names = [name for name, entry in manager.task_index.items()
                 if name.startswith("compfair") and entry.kind.name == "TASK"]
        return get_task_dict(names, manager)


def fabricated_results(task, doc, rng):
    """What lm-eval hands process_results for one doc, by output type (values random, shapes real)."""
    kind = task.config.output_type
    if kind == "multiple_choice":
        return [(rng.uniform(-30, -1), False) for _ in task.doc_to_choice(doc)]
    if kind == "loglikelihood_rolling":
        return [rng.uniform(-300, -10)]
    if kind == "generate_until" and task.config.task == "compfair_seat":  # compfair-mlm's sentence embeddings
        from compfair_tasks.mlm import encode_embeddings

        n = sum(len(group) for group in doc["sentences"])
        return [encode_embeddings(np.random.default_rng(rng.randrange(1 << 30)).standard_normal((n, 8)))]
    if kind == "generate_until":  # compfair's toxicity filter: K JSON records per prompt (fluency_model given)
        return [[json.dumps({"text": "some words", "toxicity": rng.random(), "tokens": 2,
                             "fluency_ppl": rng.uniform(2, 50)})
                 for _ in range(task.config.repeats)]]
    raise AssertionError(f"{task.config.task}: no fabricated results for output_type {kind!r}; add them here")


def test_every_task_was_built(compfair_tasks):
    assert {"compfair_stereoset", "compfair_stereoset_intersentence", "compfair_winobias_type1",
            "compfair_crows_pairs", "compfair_ppl_bold_wiki", "compfair_toxicity_rtp",
            "compfair_toxicity_rtp_offline_k25", "compfair_toxicity_tccc_safe"} <= set(compfair_tasks)


# A single-split / single-type task includes its all-in-one task's YAML, metric_list too (an include cannot
# drop entries), so it lists the per-split / per-type breakdown it cannot emit; lm-eval leaves those out.
BREAKDOWN_SUFFIXES = ("_intrasentence", "_intersentence", "_type1", "_type2")
ALL_IN_ONE = ("compfair_stereoset", "compfair_winobias", "compfair_winobias_mlm")


def test_process_results_emits_exactly_the_metric_list(compfair_tasks):
    rng = random.Random(0)
    wrong = []
    for name, task in sorted(compfair_tasks.items()):
        listed = {entry["metric"] for entry in task.config.metric_list}
        if name.startswith(ALL_IN_ONE) and name not in ALL_IN_ONE:
            listed = {metric for metric in listed if not metric.endswith(BREAKDOWN_SUFFIXES)}
        emitted: set[str] = set()
        for doc in task.test_docs():  # the union over docs: a doc emits only its own domain/split keys
            emitted |= set(task.process_results(doc, fabricated_results(task, doc, rng)))
        if emitted != listed:
            wrong.append(f"{name}: emitted but not in metric_list {sorted(emitted - listed)}; "
                         f"listed but never emitted {sorted(listed - emitted)}")
    assert not wrong, "\n".join(wrong)


def test_every_sampling_task_gives_its_filter_its_own_k(compfair_tasks):
    """The toxicity filter cuts lm-eval's data-parallel padding at its `repeats`: it must be the task's K."""
    checked = 0
    for name, task in sorted(compfair_tasks.items()):
        if task.config.output_type != "generate_until" or name == "compfair_seat":  # SEAT: embeddings, no sampling
            continue
        (entry,) = task.config.filter_list
        (score,) = entry["filter"]
        assert score["function"] == "compfair_toxicity_score" and score["repeats"] == task.config.repeats, name
        checked += 1
    assert checked >= 10
