"""How fast is compfair's toxicity scoring? Two ratios, measured side by side in one run.

1. Share of a toxicity task's wall time spent scoring vs generating: the real lm-eval run of
   compfair_toxicity_rtp_offline (K = 3) with a GPT-2-small-shaped generator and a bert-base-shaped
   Detoxify checkpoint (random weights: speed does not depend on the values). Target <= 25% on CPU.
2. compfair's batched scorer vs Detoxify's `predict` called once per text, on the same texts and the
   same bert-base-shaped checkpoint. Target >= 2.5x on CPU. The texts are continuation-shaped English
   (shipped BOLD Wikipedia sentences cut to their first 20 GPT-2 tokens, the task's bound): the random
   generator of 1 writes gibberish that is far longer in BERT word pieces than real continuations
   (its ratio is printed too).

    python benchmarks/toxicity_scoring.py [--prompts 16] [--threads N]

On a shared, loaded machine a per-text loop with 2 threads can be slowed far more than batched calls
(threads wait for each other on every small matrix product); compare runs at --threads 1 as well.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def bert_base_detoxify(folder: Path) -> Path:
    from toxicity_helpers import save_tiny_detoxify

    # bert-base: 12 layers, 768 hidden, 12 heads, 3072 intermediate (BertConfig's defaults); normal init range
    return save_tiny_detoxify(folder, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                              intermediate_size=3072, initializer_range=0.02)


def gpt2_small(folder: Path) -> Path:
    from conftest import save_tiny_gpt2

    return save_tiny_gpt2(folder, n_layer=12, n_head=12, n_embd=768)


def continuation_like_texts(n: int) -> list[str]:
    """n English sentences from the shipped BOLD Wikipedia data, each cut to its first 20 GPT-2 tokens."""
    import json

    from conftest import build_gpt2_tokenizer

    tokenizer = build_gpt2_tokenizer()
    groups = json.loads((ROOT / "compfair_tasks" / "data" / "bold_wiki" / "profession_wiki.json").read_text())
    sentences = [s for people in groups.values() for texts in people.values() for s in texts][:n]
    return [" " + tokenizer.decode(tokenizer(s)["input_ids"][:20]) for s in sentences]


class Stopwatch:
    """Wraps a method so that the time spent inside it accumulates in `seconds`."""

    def __init__(self, owner, name):
        self.seconds = 0.0
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        setattr(owner, name, timed)


def run_task(generator: Path, prompts: int, batch_size: int, scorer_options: dict):
    """One lm-eval run; returns (generation seconds, scoring seconds, the scored continuation texts)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from compfair_tasks import toxicity

    generating = Stopwatch(HFLM, "generate_until")
    scoring = Stopwatch(toxicity.ScoreContinuations, "apply")
    out = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={generator}", device="cpu", log_samples=True,
                                  tasks=["compfair_toxicity_rtp_offline"], limit=prompts, batch_size=batch_size,
                                  metadata={f"scorer_{key}": value for key, value in scorer_options.items()})
    samples = out["samples"]["compfair_toxicity_rtp_offline"]
    texts = [r["text"] for s in samples for r in toxicity.sample_records(s["filtered_resps"])]
    return generating.seconds, scoring.seconds, texts


def best_of(repeats, function):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16, help="RTP prompts to generate for (K = 3 each)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for every measurement "
                        "(default: torch's own choice)")
    parser.add_argument("--batch-tokens", type=int, default=None,
                        help="compfair scorer: padded tokens per batch (default: 1024 on CPU)")
    parser.add_argument("--repeats", type=int, default=1, help="scoring timings keep the best of this many runs")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    from detoxify import Detoxify

    from compfair_tasks import scorers

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        detoxify_dir = bert_base_detoxify(tmp / "detoxify")
        os.environ[scorers.CHECKPOINT_ENV] = str(detoxify_dir)
        options = {"batch_tokens": args.batch_tokens, "device": "cpu", "progress": False}
        scorer = scorers.get_scorer("detoxify-original", **options)  # loaded before timing; the task reuses it

        generate_s, score_s, texts = run_task(gpt2_small(tmp / "gpt2"), args.prompts, 32, options)
        share = score_s / (score_s + generate_s)
        print(f"task run: {len(texts)} continuations; generating {generate_s:.1f} s, scoring {score_s:.1f} s")
        print(f"RATIO scoring share of (scoring + generating) wall time: {share:.1%} (target <= 25%)")

        checkpoint = next(detoxify_dir.glob("toxic_original-*.ckpt"))
        reference = Detoxify(checkpoint=str(checkpoint), huggingface_config_path=str(detoxify_dir))

        def compare(texts):
            texts = [t for t in texts if t.strip()]
            loop_s = best_of(args.repeats, lambda: [reference.predict(t) for t in texts])
            per32_s = best_of(args.repeats, lambda: [reference.predict(texts[i : i + 32])
                                                     for i in range(0, len(texts), 32)])
            ours_s = best_of(args.repeats, lambda: scorer.score(texts))
            print(f"  {len(texts)} texts, {threads} threads: Detoxify per-text loop {loop_s:.2f} s, "
                  f"Detoxify predict per 32 texts {per32_s:.2f} s ({loop_s / per32_s:.2f}x), compfair {ours_s:.2f} s")
            return loop_s / ours_s

        print("scoring the generated (random-model) continuations:")
        print(f"  compfair batched vs per-text loop: {compare(texts):.2f}x")
        print("scoring continuation-like English texts:")
        ratio = compare(continuation_like_texts(96))
        print(f"RATIO compfair batched scorer vs Detoxify per-text predict loop: {ratio:.2f}x (target >= 2.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
