"""Throughput of compfair's preference tasks against a bare batched forward pass over the same tokens.

    python benchmarks/loglik_throughput.py                 # 100 docs per task of each family
    python benchmarks/loglik_throughput.py --limit 0       # the full StereoSet + WinoBias requests

Side A runs `compfair_stereoset` and `compfair_winobias` through `lm_eval.simple_evaluate`
(doc loading and token counting of every doc, lm-eval's request machinery, per-doc results, aggregation
and bootstrap CIs, all timed; lm-eval's own index of its task YAMLs is built before the clock starts). Side B, in the same run, feeds exactly the token sequences HFLM built (recorded on the
way through) to the model in batches of the same size and length order, with the log-softmax and
gather that a log-likelihood needs and nothing else: the limit. The script prints tokens/s of both and
the ratio B-time / A-time (target >= 0.9). The model is GPT-2-small shaped (12 layers, 768 wide,
GPT-2 BPE), random weights, built offline.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
TASKS = ["compfair_stereoset", "compfair_winobias"]


def gpt2_small_dir(folder: Path) -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import save_tiny_gpt2  # the offline GPT-2 BPE tokenizer + a random GPT-2 of any shape

    return save_tiny_gpt2(folder, n_layer=12, n_head=12, n_embd=768)


class Clock:
    """Wall time and this process's CPU time (all threads): on a shared machine CPU time is the steadier."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def run_compfair(lm, model_dir: Path, limit: int | None, batch_size: int):
    """Time the compfair tasks end to end; return (seconds, recorded token sequences, results)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    recorded, inner = [], []
    original = lm._loglikelihood_tokens

    def recording(requests, **kwargs):
        recorded.extend((context + continuation, len(continuation)) for _, context, continuation in requests)
        clock = Clock()
        out = original(requests, **kwargs)
        inner.append(clock.stop())
        return out

    lm._loglikelihood_tokens = recording
    metadata = {"pretrained": str(model_dir)}
    # lm-eval's index of its ~14k task YAMLs is a fixed cost of every lm-eval run, not compfair's: build it untimed
    task_manager = TaskManager(metadata=metadata)
    clock = Clock()
    results = lm_eval.simple_evaluate(model=lm, tasks=TASKS, limit=limit, batch_size=batch_size,
                                      task_manager=task_manager, metadata=metadata)
    lm._loglikelihood_tokens = original
    return clock.stop(), tuple(map(sum, zip(*inner))), recorded, results


@torch.inference_mode()
def run_bare(model, sequences, batch_size: int, max_length: int) -> tuple[float, float]:
    """(wall, CPU) seconds for a batched forward + log-softmax + gather over the same sequences (longest first)."""
    rows = sorted(((tokens[-(max_length + 1):][:-1], tokens[-(max_length + 1):][1:], n) for tokens, n in sequences),
                  key=lambda row: -len(row[0]))
    clock = Clock()
    for i in range(0, len(rows), batch_size):
        batch = rows[i:i + batch_size]
        width = len(batch[0][0])
        inputs = torch.zeros(len(batch), width, dtype=torch.long)
        for j, (ids, _, _) in enumerate(batch):
            inputs[j, :len(ids)] = torch.tensor(ids)
        logprobs = torch.log_softmax(model(inputs).logits.float(), dim=-1)
        for j, (ids, targets, n) in enumerate(batch):
            positions = torch.arange(len(ids) - n, len(ids))
            logprobs[j, positions, torch.tensor(targets[-n:])].sum().item()
    return clock.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=100, help="docs per task; 0 = all (default 100)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", type=Path, help="a saved causal LM folder (default: random GPT-2-small shape)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from lm_eval.models.huggingface import HFLM

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or gpt2_small_dir(Path(tmp) / "gpt2_small")
        lm = HFLM(pretrained=str(model_dir), batch_size=args.batch_size, device="cpu")
        run_bare(lm.model, [([50256] * 8, 4)] * 4, 4, lm.max_length)  # warm-up
        compfair_s, loop_s, sequences, results = run_compfair(lm, model_dir, args.limit or None, args.batch_size)
        bare_s = run_bare(lm.model, sequences, args.batch_size, lm.max_length)

    tokens = sum(len(tokens) - 1 for tokens, _ in sequences)
    print(f"requests: {len(sequences)}  tokens: {tokens}  batch: {args.batch_size}  threads: {args.threads}")
    timings = (("compfair tasks (end to end)", compfair_s), ("  of which lm-eval model loop", loop_s),
               ("bare batched forward", bare_s))
    for name, (wall, cpu) in timings:
        print(f"{name:28s} wall {wall:8.2f} s {tokens / wall:8.0f} tok/s   cpu {cpu:8.2f} s {tokens / cpu:8.0f} tok/s")
    print(f"ratio bare/compfair: wall {bare_s[0] / compfair_s[0]:.3f}, cpu {bare_s[1] / compfair_s[1]:.3f}"
          "  (target >= 0.9)")
    ss = results["results"]["compfair_stereoset"]["ss,none"]
    print(f"(sanity: ss = {ss:.2f}, anti_pct = {results['results']['compfair_winobias']['anti_pct,none']:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
