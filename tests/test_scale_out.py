"""Multi-process runs give the single-process numbers.

What was measured here (accelerate 1.15, lm-eval 0.4.13, torch 2.13 CPU):
- `accelerate launch --num_processes 2 --cpu` starts ONE process; `ACCELERATE_USE_CPU=1 accelerate launch
  --multi_gpu --num_processes 2` starts two, joined as accelerate's MULTI_CPU (gloo); so does torchrun.
- lm-eval's `hf` model splits the documents across processes only when it sees more than one GPU (its source:
  `elif gpus > 1`); on CPU every process would evaluate every document. So on CPU the lm_eval runs use
  tests/lm_eval_cpu_data_parallel.py, which takes rank and world size from accelerate through LM's public
  `rank`/`world_size` properties: lm-eval's evaluator then shards, pads and gathers exactly as across GPUs,
  and each rank logs how many requests it ran. With >= 2 GPUs the same tests run `--model hf` itself.
- Found by these tests, and fixed: lm-eval gathers the per-doc values of the ranks by rank 0's metric keys,
  so a subgroup key that only some docs reported (`anti_pct_female`) raised KeyError when a rank had no doc
  of that subgroup; and the ranks' values arrive rank after rank, so a seeded bootstrap over positions gave
  other CIs than one process. Every doc now reports every subgroup key, and the bootstraps sort first.
- Sampling cannot be identical: each rank seeds torch with --seed and draws for its own share of the prompts,
  in its own batches. Greedy decoding is, and sampled metrics agree within a paired test.
- Distillation (HF Trainer) shards on CPU under torchrun: 2 processes x batch B equal 1 process x batch 2B.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compfair_tasks import stats
from tests.conftest import OFFLINE_ENV, build_gpt2_tokenizer, run_lm_eval

pytestmark = pytest.mark.slow
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
CPU_DATA_PARALLEL = Path(__file__).with_name("lm_eval_cpu_data_parallel.py")
LOGLIK_TASKS = ("compfair_winobias", "compfair_stereoset", "compfair_crows_pairs")
TOXICITY = "compfair_toxicity_rtp_offline"


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
    files = sorted(output_path.rglob("results_*.json"))
    assert len(files) == 1, f"expected one results file under {output_path}, found {files}"  # rank 0 writes
    return json.loads(files[0].read_text())


def _metrics(results: dict, task: str) -> dict:
    """Numeric metrics by key (NaN as the string "nan", so that NaN == NaN)."""
    return {k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in results["results"][task].items()
            if "," in k}


def _same(a, b) -> bool:
    """Equal strings ("nan", "N/A"), or numbers equal to 1e-12 relative."""
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return b == pytest.approx(a, rel=1e-12, abs=1e-15)


def _samples(output_path, task) -> dict[int, dict]:
    path = next(output_path.rglob(f"samples_{task}_*.jsonl"))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {row["doc_id"]: row for row in rows}


def _accelerate(port: int) -> list[str]:
    """`accelerate launch` of two processes on a port of the test's own (tests may run side by side)."""
    return [_tool("accelerate"), "launch", "--num_processes", "2", "--main_process_port", str(port)]


def _two_processes(args: list[str], output_path: Path, port: int) -> dict[int, int] | None:
    """lm_eval in two processes; on CPU returns the requests each rank ran (see the module doc)."""
    accelerate = _accelerate(port)
    if torch.cuda.device_count() >= 2:
        _run([*accelerate, "-m", "lm_eval", "--model", "hf", *args, "--output_path", str(output_path)])
        return None
    shard_log = output_path / "requests_per_rank"
    shard_log.mkdir(parents=True)
    _run([*accelerate, "--multi_gpu", str(CPU_DATA_PARALLEL), "--model", "hf-cpu-data-parallel", *args,
          "--output_path", str(output_path)], env={"ACCELERATE_USE_CPU": "1", "COMPFAIR_SHARD_LOG": str(shard_log)})
    return {int(p.stem.removeprefix("rank")): sum(json.loads(p.read_text()).values()) for p in shard_log.iterdir()}


def _one_process(args: list[str], output_path: Path) -> dict:
    return run_lm_eval(["--model", "hf", *args], output_path, env=THREADS)


def _assert_split(requests_per_rank: dict[int, int] | None, single_requests: int) -> None:
    if requests_per_rank is None:  # GPUs: lm-eval's own split, not logged
        return
    assert sorted(requests_per_rank) == [0, 1], requests_per_rank
    # each rank ran its share (the shorter one padded to the longer): neither ran everything
    assert all(n < single_requests for n in requests_per_rank.values()), (requests_per_rank, single_requests)
    assert sum(requests_per_rank.values()) >= single_requests


def test_accelerate_cpu_launch_needs_multi_gpu_and_use_cpu_for_two_processes(tmp_path):
    probe = tmp_path / "probe.py"
    # one line per process, written whole (two processes printing at once interleave their words)
    probe.write_text("import sys\nfrom accelerate import Accelerator\na = Accelerator()\n"
                     "sys.stdout.write(f'PROBE {a.num_processes} {a.distributed_type}\\n'); sys.stdout.flush()\n")
    accelerate = _accelerate(29523)
    one = _run([*accelerate, "--cpu", str(probe)]).stdout
    two = _run([*accelerate, "--multi_gpu", str(probe)], env={"ACCELERATE_USE_CPU": "1"}).stdout
    assert one.count("PROBE") == 1 and "PROBE 1 " in one, one
    assert two.count("PROBE 2 DistributedType.MULTI_CPU") == 2, two


def _common_args(model_dir: Path, tasks, limit: int, batch_size: int, metadata: dict) -> list[str]:
    return ["--model_args", f"pretrained={model_dir}", "--tasks", ",".join(tasks), "--limit", str(limit),
            "--batch_size", str(batch_size), "--seed", "1234", "--metadata", json.dumps(metadata), "--log_samples"]


def test_loglik_tasks_and_greedy_toxicity_in_two_processes_equal_one_process(tiny_gpt2_dir, tmp_path):
    """Every metric, CIs included, equal to 1e-12 relative: lm-eval's own means and stderrs add the gathered
    values in rank order, which moves the last bit (seen: a stderr 0.11111111111111112 vs ...11). Batch size 1,
    so that each request is computed alike in both runs whatever its batch neighbours."""
    tasks = (*LOGLIK_TASKS, TOXICITY)
    metadata = {"scorer": "profanity-check", "fluency_model": str(tiny_gpt2_dir)}
    args = [*_common_args(tiny_gpt2_dir, tasks, 9, 1, metadata), "--gen_kwargs", "do_sample=False"]
    single = _one_process(args, tmp_path / "single")
    requests = _two_processes(args, tmp_path / "dp", 29525)
    parallel = _results(tmp_path / "dp")
    # 9 docs each: WinoBias and CrowS 2 candidates, StereoSet 3, toxicity K=3 continuations
    _assert_split(requests, 9 * (2 + 3 + 2 + 3))
    for task in tasks:
        one, two = _metrics(single, task), _metrics(parallel, task)
        assert len(one) > 10 and one.keys() == two.keys(), task
        differing = {key: (one[key], two[key]) for key in one if not _same(one[key], two[key])}
        assert not differing, (task, differing)
        assert sorted(_samples(tmp_path / "dp", task)) == list(range(9))  # both ranks' docs gathered, none twice
    texts = [row["resps"] for row in _samples(tmp_path / "single", TOXICITY).values()]
    assert {text for (resp,) in texts for text in resp} - {""}  # it did write something


def test_sampled_toxicity_in_two_processes_agrees_with_one_process(tiny_gpt2_dir, tmp_path):
    """Sampling is not identical (see the module doc): the per-prompt metrics of the two runs, same prompts,
    must not differ by a paired permutation test at p < 0.001 per metric (Bonferroni for ~20 metrics at 0.02)."""
    args = _common_args(tiny_gpt2_dir, [TOXICITY], 12, 4, {"scorer": "profanity-check"})
    _one_process(args, tmp_path / "single")
    requests = _two_processes(args, tmp_path / "dp", 29527)
    _assert_split(requests, 12 * 3)
    one, two = _samples(tmp_path / "single", TOXICITY), _samples(tmp_path / "dp", TOXICITY)
    assert sorted(one) == sorted(two) == list(range(12))
    assert [one[i]["doc"]["context"] for i in one] == [two[i]["doc"]["context"] for i in one]
    assert all(len(row["resps"][0]) == 3 for row in two.values())  # K = 3 samples per prompt
    assert any(one[i]["resps"] != two[i]["resps"] for i in one)  # really sampled, else the exact test applies
    metrics = [m for m in one[0]["metrics"] if isinstance(one[0][m], (int, float)) and not m.endswith(("_low", "_high"))]
    assert {"emt", "tox_prob", "cont_len_words", "distinct_2"} <= set(metrics)
    for metric in metrics:
        a = [float(one[i][metric]) for i in sorted(one)]
        b = [float(two[i][metric]) for i in sorted(one)]
        kept = [(x, y) for x, y in zip(a, b) if not (math.isnan(x) or math.isnan(y))]
        p_value = stats.paired_permutation_test(*zip(*kept))["p_value"]
        assert p_value >= 0.001, (metric, p_value, a, b)


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
