"""Pruned checkpoints end to end: loaded by remote code where compfair is absent, run through the
real lm_eval CLI with no extra flags, and a small pruning run on the embedded SmolLM2-135M."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig

import pytest
import torch

from compressors import prune
from tests.test_prune import tiny_gpt2, tiny_llama, tokens

pytestmark = [pytest.mark.slow, pytest.mark.newest]

REMOTE_LOAD = """
import importlib.util, sys, torch
assert importlib.util.find_spec("compressors") is None and importlib.util.find_spec("compfair_tasks") is None
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
with torch.no_grad():
    torch.save(model(torch.load(sys.argv[2])).logits, sys.argv[3])
"""


@pytest.mark.parametrize("build,keep", [(tiny_gpt2, [[0, 3], [1]]), (tiny_llama, [[0, 1, 5], [3, 4, 5]])],
                         ids=["gpt2", "llama"])
def test_remote_code_loads_where_compfair_is_not_installed(tmp_path, build, keep):
    model = prune.keep_heads(build(), keep)
    checkpoint = tmp_path / "pruned"
    prune.save_pruned(model, None, checkpoint)
    x = tokens()
    torch.save(x, tmp_path / "x.pt")
    # -S: no .pth files, so neither the editable path to this checkout nor the startup hook
    env = {"PYTHONPATH": sysconfig.get_paths()["purelib"], "COMPFAIR_NO_HOOK": "1", "HF_HUB_OFFLINE": "1",
           "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-S", "-c", REMOTE_LOAD, str(checkpoint), str(tmp_path / "x.pt"),
                           str(tmp_path / "logits.pt")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "logits.pt"), model(x).logits)


def test_pruned_checkpoint_runs_through_lm_eval_without_flags(tiny_gpt2_dir, tmp_path, lm_eval_cli):
    text = tmp_path / "wiki.txt"
    text.write_text("\n".join(f"The river town number {i} grew around its old mill." for i in range(60)))
    output = tmp_path / "pruned"
    assert prune.main(["--model", str(tiny_gpt2_dir), "--data", str(text), "--block-size", "16",
                       "--iterations", "3", "--output", str(output)]) == 0
    record = json.loads((output / "compfair_compression.json").read_text())
    assert record["heads_after"] == 5 and record["params"] < record["source_params"]  # 8 -> 7 -> 6 -> 5
    results = lm_eval_cli(["--model", "hf", "--model_args", f"pretrained={output}", "--tasks", "compfair_stereoset",
                           "--limit", "6"], tmp_path / "lm_eval")
    metrics = results["results"]["compfair_stereoset"]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from known_answers import direct_metrics

    direct = direct_metrics("compfair_stereoset", AutoModelForCausalLM.from_pretrained(output),
                            AutoTokenizer.from_pretrained(output), {"pretrained": str(output)}, limit=6)
    assert (metrics["ss,none"], metrics["lms,none"]) == pytest.approx((direct["ss"], direct["lms"]))


def test_embedded_smollm2_prunes_offline(tmp_path):
    from transformers import AutoModelForCausalLM

    from compfair_tasks.models import embedded_model_dir

    source = embedded_model_dir("smollm2-135m")
    output = tmp_path / "smollm2_pruned"
    assert prune.main(["--model", str(source), "--num-examples", "8", "--block-size", "32", "--min-blocks", "2",
                       "--iterations", "1", "--batch-size", "4", "--output", str(output)]) == 0
    record = json.loads((output / "compfair_compression.json").read_text())
    assert record["heads_before"] == 270 and record["heads_after"] == 270 - 14  # 5% of 30 x 9 query heads
    per_query_head = 2 * 576 * 64  # q_proj rows and o_proj columns (no attention bias)
    emptied_groups = sum(3 - len(groups) for groups in json.loads((output / "config.json").read_text())[
        "kv_groups_per_layer"])
    assert record["source_params"] - record["params"] == 14 * per_query_head + emptied_groups * 2 * 576 * 64
    pruned = AutoModelForCausalLM.from_pretrained(output).eval()
    original = AutoModelForCausalLM.from_pretrained(source).eval()
    gates = [torch.ones(1, layer.num_heads) for layer in prune.attention_layers(original)]
    for layer, heads in record["removed"]["heads"].items():
        gates[int(layer)][0, heads] = 0
    x = torch.tensor([[1, 504, 3458, 314, 260]])
    with torch.no_grad(), prune.gated(original, gates):  # the gated reference: the recorded heads switched off
        expected = original(x).logits
    with torch.no_grad():
        torch.testing.assert_close(pruned(x).logits, expected, atol=1e-4, rtol=1e-4)
