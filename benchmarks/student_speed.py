"""Forward latency of a 6-block distilled student vs its 12-block teacher (GPT-2-small shape, random weights).

Both models run on the same inputs in the same process, alternating, and the ratio of median times is
printed twice: for the transformer body (the blocks, where distillation removes work; FLOP bound 2.0x)
and for the whole LM with its 50,257-word output projection, which the student keeps in full.

    python benchmarks/student_speed.py [--batch 1 --seq-len 128 --repeats 7 --threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from compressors.distill import evenly_spaced_layers, make_student


def forward_macs_per_token(config, n_blocks: int, seq_len: int, with_head: bool) -> float:
    d = config.n_embd
    block = 12 * d * d + 2 * seq_len * d  # q,k,v,out + 4x MLP; attention scores and mixing over seq_len keys
    return n_blocks * block + (d * config.vocab_size if with_head else 0)


def _timed(run, inputs) -> float:
    start = time.perf_counter()
    run(inputs)
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    config = GPT2Config(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, n_positions=1024)
    teacher = GPT2LMHeadModel(config).eval()
    layers = evenly_spaced_layers(6, 12)
    student = make_student(teacher, layers, "teacher").eval()
    inputs = torch.randint(0, config.vocab_size, (args.batch, args.seq_len))

    cases = {
        "blocks (transformer body)": (lambda ids: teacher.transformer(ids, use_cache=False),
                                      lambda ids: student.transformer(ids, use_cache=False), False),
        "full LM (with vocab head)": (lambda ids: teacher(ids, use_cache=False),
                                      lambda ids: student(ids, use_cache=False), True),
    }
    print(f"GPT-2-small shape, student blocks {layers}; batch {args.batch} x {args.seq_len} tokens, "
          f"{args.threads} threads, median of {args.repeats} alternating runs")
    with torch.inference_mode():
        for name, (run_teacher, run_student, with_head) in cases.items():
            for run in (run_teacher, run_student):  # warm-up
                run(inputs)
            teacher_times, student_times = [], []
            for repeat in range(args.repeats):  # alternate order so drifting load hits both alike
                pair = [(run_teacher, teacher_times), (run_student, student_times)]
                for run, times in pair if repeat % 2 == 0 else pair[::-1]:
                    times.append(_timed(run, inputs))
            t_med, s_med = statistics.median(teacher_times), statistics.median(student_times)
            bound = (forward_macs_per_token(config, 12, args.seq_len, with_head)
                     / forward_macs_per_token(config, 6, args.seq_len, with_head))
            print(f"{name:<27} teacher {t_med * 1e3:8.1f} ms  student {s_med * 1e3:8.1f} ms  "
                  f"speed-up {t_med / s_med:.2f}x  (FLOP bound {bound:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
