"""Hand-made study folders (plan.json, study.json, records, lm_eval results and samples) for the report's tests.

A cell's StereoSet results are given per document as (domain, stereotype beats anti: 0/1, meaningful beats
unrelated: 0/1/2); the aggregates in results_*.json are compfair_tasks.stereoset's own, so every reported value
is what lm_eval would have written for those documents. The lm_eval files come from tests/leaderboard_results.
"""

from __future__ import annotations

import json
from pathlib import Path

from compfair_tasks import stereoset
from leaderboard_results import write_run

STEREOSET = "compfair_stereoset_intrasentence"
PERPLEXITY = "compfair_ppl_bold_wiki"
# (stereotype, anti, unrelated) log-likelihoods giving each (pro, related) outcome
SCORES = {(1, 2): (-1, -2, -3), (1, 1): (-1, -3, -2), (1, 0): (-2, -3, -1),
          (0, 2): (-2, -1, -3), (0, 1): (-3, -1, -2), (0, 0): (-3, -2, -1)}


def cell(series: str, step: int, compression: str = "none", level=None, label: str | None = None) -> dict:
    name = compression if level is None else f"{compression}-{level:g}"
    return {"id": f"{series}@step{step}+{name}", "series": series, "series_order": 0,
            "axis": {"name": "step", "value": step},
            "member": {"pretrained": f"/models/{series}", "revision": f"step{step}", "label": f"{series}@{step}",
                       "size": None},
            "compression": {"method": compression, "level": level, "label": label or name},
            "lm_eval_model": "hf", "tasks": [STEREOSET], "limit": None, "batch_size": 8, "seed": 1234,
            "metadata": {}, "gen_kwargs": ""}


def stereoset_docs(outcomes: list[tuple[str, int, int]]) -> list[dict]:
    """Per-document samples lines of the StereoSet task (one target per domain)."""
    docs = []
    for i, (domain, pro, related) in enumerate(outcomes):
        stereo, anti, unrelated = SCORES[(pro, related)]
        record = {"id": f"ex{i}", "target": domain, "domain": domain, "split": "intrasentence",
                  "stereotype": stereo, "anti": anti, "unrelated": unrelated}
        line = {"doc_id": i, "doc": {"id": f"ex{i}", "domain": domain}}
        for name in ("ss", "lms", "icat"):
            line[name] = record
            line.update({f"{name}_{d}": record if d == domain else None for d in stereoset.DOMAINS})
        docs.append(line)
    return docs


def stereoset_metrics(docs: list[dict]) -> dict[str, float]:
    records = [doc["ss"] for doc in docs]
    metrics = dict(stereoset.scores(records))
    for domain in stereoset.DOMAINS:
        members = [r for r in records if r["domain"] == domain]
        if members:
            metrics.update({f"{k}_{domain}": v for k, v in stereoset.scores(members).items()})
    return metrics


def perplexity_docs(pairs: list[tuple[float, int]]) -> list[dict]:
    return [{"doc_id": i, "doc": {"id": f"page{i}"}, "word_perplexity": [ll, words]}
            for i, (ll, words) in enumerate(pairs)]


def write_cell(study: Path, cell_dict: dict, stereoset_outcomes=None, perplexity_pairs=None,
               status: str = "done") -> None:
    import math

    folder = study / "cells" / cell_dict["id"]
    metrics, samples = {}, {}
    if stereoset_outcomes is not None:
        samples[STEREOSET] = stereoset_docs(stereoset_outcomes)
        metrics[STEREOSET] = stereoset_metrics(samples[STEREOSET])
    if perplexity_pairs is not None:
        samples[PERPLEXITY] = perplexity_docs(perplexity_pairs)
        metrics[PERPLEXITY] = {"word_perplexity": math.exp(-sum(ll for ll, _ in perplexity_pairs)
                                                           / sum(w for _, w in perplexity_pairs))}
    if status == "done":
        write_run(folder / "results", cell_dict["member"]["pretrained"], metrics, samples,
                  model_args={"pretrained": cell_dict["member"]["pretrained"],
                              "revision": cell_dict["member"]["revision"]})
    record = {"format": 1, "cell": cell_dict, "settings_key": "test", "status": status,
              "error": None if status == "done" else "boom", "log": "cell.log", "results_dir": "results"}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "record.json").write_text(json.dumps(record))


def write_study(study: Path, cells: list[dict], control: dict | None = None, name: str = "test-study") -> Path:
    study.mkdir(parents=True, exist_ok=True)
    (study / "plan.json").write_text(json.dumps(cells))
    (study / "study.json").write_text(json.dumps({"format": 1, "name": name, "control": control,
                                                  "executor": {"kind": "local"}}))
    return study
