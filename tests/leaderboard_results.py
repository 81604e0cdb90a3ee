"""Hand-made lm_eval output folders, for the leaderboard tests that need a value no tiny model produces.

The leaderboard's core tests run on real lm_eval output (`real_runs` in test_leaderboard.py); this writer is
for the rest (a hand-made flip, a BOLD group gap, a broken file): `write_run` makes
`<out>/<model_name_sanitized>/results_<stamp>.json` plus one `samples_<task>_<stamp>.jsonl` per task, named
and versioned by lm_eval itself.
"""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import version
from pathlib import Path

from lm_eval.utils import sanitize_model_name as _sanitize


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def write_run(output: Path, pretrained: str, metrics: dict[str, dict[str, float]],
              samples: dict[str, list[dict]] | None = None, params: int | None = None,
              stamp: str = "2026-01-01T00-00-00.000000", model_args: dict | str | None = None) -> Path:
    """metrics: task -> {metric: value} (a `metric_stderr` entry becomes the stderr); samples: task -> per-doc
    dicts {"doc_id": i, <metric>: value, ...}. Returns the results file."""
    folder = Path(output) / _sanitize(pretrained)
    folder.mkdir(parents=True, exist_ok=True)
    results = {}
    for task, values in metrics.items():
        entry = {"name": task, "alias": task, "sample_len": len((samples or {}).get(task, [])) or 10}
        for metric, value in values.items():
            entry[f"{metric},none"] = value
        for metric in values:
            if not metric.endswith("_stderr") and f"{metric}_stderr,none" not in entry:
                entry[f"{metric}_stderr,none"] = "N/A"
        results[task] = entry
    data = {
        "results": results,
        "group_subtasks": {},
        "configs": {task: {"task": task, "metadata": {"version": 1.0}} for task in metrics},
        "versions": {task: 1.0 for task in metrics},
        "n-samples": {task: {"original": 10, "effective": 10} for task in metrics},
        "config": {"model": "hf", "model_args": model_args if model_args is not None else {"pretrained": pretrained},
                   "model_num_parameters": params, "batch_size": 1, "device": "cpu"},
        "model_name": pretrained,
        "model_name_sanitized": _sanitize(pretrained),
        "lm_eval_version": version("lm_eval"),
    }
    results_file = folder / f"results_{stamp}.json"
    results_file.write_text(json.dumps(data, indent=2))
    for task, docs in (samples or {}).items():
        with open(folder / f"samples_{task}_{stamp}.jsonl", "w") as handle:
            for doc in docs:
                metric_names = [k for k in doc if k not in ("doc_id", "text", "doc")]
                logged_doc = doc.get("doc", {"text": doc.get("text", f"doc {doc['doc_id']}")})
                line = {"doc_id": doc["doc_id"], "doc": logged_doc,
                        "target": "0", "arguments": {}, "resps": [], "filtered_resps": [], "filter": "none",
                        "metrics": metric_names, "doc_hash": _hash(doc.get("text", f"doc {doc['doc_id']}")),
                        "prompt_hash": _hash("p"), "target_hash": _hash("t"),
                        **{k: doc[k] for k in metric_names}}
                handle.write(json.dumps(line) + "\n")
    return results_file


def write_compression(checkpoint: Path, method: str, source_model: str, params: int, size_bytes: int,
                      **settings) -> Path:
    checkpoint = Path(checkpoint)
    checkpoint.mkdir(parents=True, exist_ok=True)
    (checkpoint / "config.json").write_text("{}")
    path = checkpoint / "compfair_compression.json"
    path.write_text(json.dumps({"method": method, "source_model": source_model, "settings": settings, "seed": 0,
                                "params": params, "size_bytes": size_bytes}))
    return path
