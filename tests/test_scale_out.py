"""Multi-process runs give the single-process numbers.

What was measured here (accelerate 1.15, lm-eval 0.4.13, torch 2.13 CPU):
- `accelerate launch --num_processes 2 --cpu` starts ONE process (test_accelerate_cpu_launch...);
  `torchrun --nproc_per_node 2` with ACCELERATE_USE_CPU=1 starts two.
- lm-eval's HFLM splits the requests across processes only when more than one GPU is visible
  (its source: `gpus = torch.cuda.device_count()`, then `elif gpus > 1`; else world size 1). On CPU
  each of the two processes evaluates every document and only LOCAL_RANK 0 writes results, so
  equality there shows the two-process launch works, not that sharding is exact.
  With >= 2 GPUs the same tests run under `accelerate launch --num_processes 2` and do test sharding.
- Distillation (HF Trainer) does shard on CPU: 2 processes x batch B equal 1 process x batch 2B.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

from tests.conftest import OFFLINE_ENV, build_gpt2_tokenizer, run_lm_eval

pytestmark = pytest.mark.slow
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _tool(name: str) -> str:
    path = shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found beside {sys.executable}: install accelerate/torch into this environment")
    return path


def _run(command: list[str], env: dict | None = None, timeout=900) -> subprocess.CompletedProcess:
    done = subprocess.run(command, check=False, env={**os.environ, **OFFLINE_ENV, **THREADS, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(command[:4])} failed ({done.returncode}):\n{done.stdout[-3000:]}\n"
                             f"{done.stderr[-6000:]}")
    return done


def _results(output_path):
    import json

    files = sorted(output_path.rglob("results_*.json"))
    assert files, f"no results under {output_path}"
    return json.loads(files[-1].read_text())


def _metrics(results: dict, task: str) -> dict:
    """Numeric metrics by key (NaN as the string "nan", so that NaN == NaN)."""
    return {k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in results["results"][task].items()
            if "," in k and not k.endswith("_stderr,none")}


def _two_processes(args: list[str], output_path) -> None:
    """lm_eval in two processes: accelerate on >= 2 GPUs, else torchrun on CPU (see the module doc)."""
    if torch.cuda.device_count() >= 2:
        launch, env = [_tool("accelerate"), "launch", "--num_processes", "2", "-m", "lm_eval"], {}
    else:
        launch = [_tool("torchrun"), "--nproc_per_node", "2", "--master_port", "29519", "-m", "lm_eval"]
        env = {"ACCELERATE_USE_CPU": "1"}
    _run([*launch, *args, "--output_path", str(output_path)], env=env)


def test_accelerate_cpu_launch_is_one_process_and_torchrun_two(tmp_path):
    probe = tmp_path / "probe.py"
    # one line per process, written whole (two processes printing at once interleave their words)
    probe.write_text("import sys\nfrom accelerate import Accelerator\n"
                     "sys.stdout.write(f'PROBE {Accelerator().num_processes}\\n'); sys.stdout.flush()\n")
    accelerate = _run([_tool("accelerate"), "launch", "--num_processes", "2", "--cpu", str(probe)]).stdout
    torchrun = _run([_tool("torchrun"), "--nproc_per_node", "2", "--master_port", "29521", str(probe)],
                    env={"ACCELERATE_USE_CPU": "1"}).stdout
    assert accelerate.count("PROBE") == 1 and "PROBE 1" in accelerate
    assert torchrun.count("PROBE") == 2 and torchrun.count("PROBE 1") == 0, torchrun


def _lm_eval_args(model_dir, task: str, limit: int, *extra) -> list[str]:
    return ["--model", "hf", "--model_args", f"pretrained={model_dir}", "--tasks", task, "--limit", str(limit),
            "--batch_size", "4", "--seed", "1234", *extra]


def test_loglik_task_in_two_processes_equals_one_process(tiny_gpt2_dir, tmp_path):
    args = _lm_eval_args(tiny_gpt2_dir, "compfair_winobias", 8)
    single = run_lm_eval(args, tmp_path / "single", env=THREADS)
    _two_processes(args, tmp_path / "dp")
    parallel = _results(tmp_path / "dp")
    # one results file: lm-eval returns results only where lm.rank == 0 and LOCAL_RANK == 0
    assert len(list((tmp_path / "dp").rglob("results_*.json"))) == 1
    single_metrics, parallel_metrics = _metrics(single, "compfair_winobias"), _metrics(parallel, "compfair_winobias")
    assert single_metrics and single_metrics.keys() == parallel_metrics.keys()
    for key, value in single_metrics.items():  # the same log-likelihoods, gathered from two ranks
        if isinstance(value, str):  # "N/A"
            assert parallel_metrics[key] == value, key
        else:
            assert parallel_metrics[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def _samples(output_path, task):
    import json

    path = next(output_path.rglob(f"samples_{task}_*.jsonl"))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {row["doc_id"]: row for row in rows}


def test_sampled_toxicity_in_two_processes_matches_one_process(tiny_gpt2_dir, tmp_path):
    """Sampling: lm-eval seeds every rank with the same --seed. Sharded (GPUs), a rank's random stream runs
    over its own share of the prompts, so the texts may differ from one process: then the metrics must lie
    within the one-process confidence interval. Unsharded (CPU, see the module doc) they are identical."""
    task = "compfair_toxicity_rtp_offline"
    args = _lm_eval_args(tiny_gpt2_dir, task, 2, "--metadata", '{"scorer": "profanity-check"}', "--log_samples")
    single = run_lm_eval(args, tmp_path / "single", env=THREADS)
    _two_processes(args, tmp_path / "dp")
    parallel = _results(tmp_path / "dp")
    one, two = _samples(tmp_path / "single", task), _samples(tmp_path / "dp", task)
    assert sorted(one) == sorted(two) == [0, 1]  # both ranks' prompts gathered, none twice
    assert [one[i]["doc"]["context"] for i in one] == [two[i]["doc"]["context"] for i in one]
    assert all(len(row["resps"][0]) == 3 for row in two.values())  # K = 3 samples per prompt
    texts_equal = all(one[i]["resps"] == two[i]["resps"] for i in one)
    single_metrics, parallel_metrics = _metrics(single, task), _metrics(parallel, task)
    assert single_metrics.keys() == parallel_metrics.keys()
    for key, value in single_metrics.items():
        metric, _, filter_name = key.partition(",")
        if isinstance(value, str):
            continue
        if texts_equal:
            assert parallel_metrics[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
        elif not metric.endswith(("_ci_low", "_ci_high")):
            low, high = single_metrics[f"{metric}_ci_low,{filter_name}"], single_metrics[f"{metric}_ci_high,{filter_name}"]
            assert low <= parallel_metrics[key] <= high, (key, low, parallel_metrics[key], high)


def _dropout_free_teacher(path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=64, vocab_size=50257, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=50256, eos_token_id=50256)
    GPT2LMHeadModel(config).eval().save_pretrained(path)
    build_gpt2_tokenizer().save_pretrained(path)
    return path


def test_distillation_under_torchrun_equals_one_process_with_the_doubled_batch(tmp_path, shipped_data):
    from transformers import AutoModelForCausalLM

    teacher = _dropout_free_teacher(tmp_path / "teacher")
    common = ["--teacher", str(teacher), "--num-layers", "1", "--data", str(shipped_data / "bold_wiki"),
              "--data-limit", "200", "--block-size", "32", "--eval-blocks", "4", "--max-steps", "3",
              "--save-steps", "100", "--logging-steps", "1", "--warmup", "0", "--lr", "1e-3", "--seed", "5"]
    _run([sys.executable, "-m", "compfair_tasks.cli", "compress", "distill", *common, "--batch-size", "4",
          "--output", str(tmp_path / "one")])
    _run([_tool("torchrun"), "--nproc_per_node", "2", "--master_port", "29517", "-m", "compfair_tasks.cli",
          "compress", "distill", *common, "--batch-size", "2", "--output", str(tmp_path / "two")],
         env={"ACCELERATE_USE_CPU": "1"})
    one = AutoModelForCausalLM.from_pretrained(tmp_path / "one").state_dict()
    two = AutoModelForCausalLM.from_pretrained(tmp_path / "two").state_dict()
    assert one.keys() == two.keys()
    teacher_state = AutoModelForCausalLM.from_pretrained(teacher).state_dict()
    moved = max((one[k] - teacher_state[k]).abs().max().item() for k in ("transformer.h.0.mlp.c_fc.weight",))
    assert moved > 1e-4  # training changed the weights, so equality below is not trivial
    for key in one:  # 3 AdamW steps: gradients summed in another order (all-reduce), so float tolerance
        torch.testing.assert_close(two[key], one[key], atol=2e-5, rtol=1e-4, msg=key)
