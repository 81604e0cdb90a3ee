"""lm_eval's own CLI with a model that shards documents across CPU processes, for tests/test_scale_out.py.

lm-eval's `hf` model splits the documents across `accelerate launch` processes only when it sees more than one
GPU (lm_eval/models/huggingface.py, 0.4.13: `elif gpus > 1:` sets the rank and world size; otherwise world size
1, and every process evaluates every document). This subclass takes rank and world size from the Accelerator
HFLM already made, through LM's public `rank`/`world_size` properties, which lm_eval/api/model.py documents as
the ones to override "if relying on the evaluator() for data-parallel distribution of requests". lm-eval's
evaluator then shards, pads and gathers exactly as across GPUs, so a CPU test can check that compfair's tasks
give the one-process numbers when their documents are split. Each rank writes how many requests it ran
to $COMPFAIR_SHARD_LOG/rank<r>.json, so the test can see that the work was split.

    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 tests/lm_eval_cpu_data_parallel.py \\
        --model hf-cpu-data-parallel --model_args pretrained=<dir> --tasks <tasks> ...
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM


@register_model("hf-cpu-data-parallel")
class CPUDataParallelHFLM(HFLM):
    @property
    def rank(self) -> int:
        accelerator = getattr(self, "accelerator", None)
        return accelerator.process_index if accelerator is not None else 0

    @property
    def world_size(self) -> int:
        accelerator = getattr(self, "accelerator", None)
        return accelerator.num_processes if accelerator is not None else 1

    def _log_requests(self, kind: str, requests) -> None:
        folder = os.environ.get("COMPFAIR_SHARD_LOG")
        if folder:
            path = Path(folder) / f"rank{self.rank}.json"
            counts = json.loads(path.read_text()) if path.exists() else {}
            counts[kind] = counts.get(kind, 0) + len(requests)
            path.write_text(json.dumps(counts))

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        self._log_requests("loglikelihood", requests)
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

    def generate_until(self, requests, disable_tqdm: bool = False):
        self._log_requests("generate_until", requests)
        return super().generate_until(requests, disable_tqdm=disable_tqdm)


if __name__ == "__main__":
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
