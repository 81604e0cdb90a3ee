"""End to end: the real `lm_eval` CLI on the offline RTP task, and the seq2seq generation path."""

from __future__ import annotations

import json

import numpy as np
import pytest

from compfair_tasks import scorers, toxicity
from toxicity_helpers import save_tiny_detoxify

pytestmark = pytest.mark.slow

TASK = "compfair_toxicity_rtp_offline"
METRICS = ("toxic_count", "toxic_frac", "tox_sum", "emt", "tox_prob", "cont_len_tokens", "cont_len_words",
           "empty_count", "empty_frac", "distinct_1", "distinct_2", "distinct_3", "repetition", "fluency_ppl")
FAST = {"OMP_NUM_THREADS": "1"}


def cli_args(model_dir, *extra):
    return ["--tasks", TASK, "--model", "hf", "--model_args", f"pretrained={model_dir}", "--limit", "4",
            "--batch_size", "12", "--log_samples", *extra]


def logged_samples(output_path):
    path = next(output_path.rglob(f"samples_{TASK}_*.jsonl"))
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_detoxify_checkpoint_run_writes_every_metric_and_per_sample_scores(lm_eval_cli, tiny_gpt2_dir, tmp_path,
                                                                          monkeypatch):
    """The paper's path end to end, with the generating model as its own fluency reference."""
    from compfair_tasks import degeneration

    detoxify_dir = save_tiny_detoxify(tmp_path / "detoxify")
    metadata = json.dumps({"fluency_model": str(tiny_gpt2_dir), "fluency_batch_size": 5})
    results = lm_eval_cli(cli_args(tiny_gpt2_dir, "--metadata", metadata), tmp_path / "out",
                          env={scorers.CHECKPOINT_ENV: str(detoxify_dir), **FAST})
    values = results["results"][TASK]
    for metric in METRICS:
        for key in (metric, f"{metric}_ci_low", f"{metric}_ci_high"):
            assert isinstance(values[f"{key},scored"], float | int), key
        assert values[f"{metric}_ci_low,scored"] <= values[f"{metric},scored"] <= values[f"{metric}_ci_high,scored"]
    config = results["configs"][TASK]["metadata"]
    assert config["scorer"] == "detoxify-original" and config["fluency_model"] == str(tiny_gpt2_dir)

    samples = logged_samples(tmp_path / "out")
    assert [s["doc_id"] for s in samples] == [0, 1, 2, 3]
    per_prompt = [toxicity.sample_records(s["filtered_resps"]) for s in samples]
    assert all(len(records) == 3 for records in per_prompt)
    docs = [s["doc"] for s in samples]
    checkpoint = next(detoxify_dir.glob("toxic_original-*.ckpt"))
    assert {(d["scorer"], d["scorer_revision"]) for d in docs} == {
        ("detoxify-original", f"{checkpoint.name} {scorers.files_sha256([checkpoint])}")}
    assert {d["fluency_revision"] for d in docs} == {scorers.model_revision(str(tiny_gpt2_dir))}
    emt = np.mean([max(r["toxicity"] for r in records) for records in per_prompt])
    assert values["emt,scored"] == pytest.approx(emt)
    # the logged scores are the scorer's scores of the logged continuation texts
    monkeypatch.setenv(scorers.CHECKPOINT_ENV, str(detoxify_dir))
    scorer = scorers.DetoxifyScorer(progress=False, device="cpu")
    texts = [r["text"] for records in per_prompt for r in records]
    assert scorer.score(texts) == pytest.approx([r["toxicity"] for records in per_prompt for r in records], abs=1e-5)
    # fluency: the reference model's perplexity of each logged continuation given its prompt
    reference = degeneration.FluencyModel(str(tiny_gpt2_dir), batch_size=1, progress=False)
    prompts = [d["prompt"] for d in docs for _ in range(3)]
    expected = reference.perplexities(prompts, texts)
    logged = [r["fluency_ppl"] for records in per_prompt for r in records]
    assert [p is None for p in logged] == [e is None for e in expected]
    assert [p for p in logged if p is not None] == pytest.approx([e for e in expected if e is not None], rel=1e-5)
    per_prompt_ppl = [np.mean([r["fluency_ppl"] for r in records if r["fluency_ppl"] is not None])
                      for records in per_prompt if any(r["fluency_ppl"] is not None for r in records)]
    assert values["fluency_ppl,scored"] == pytest.approx(np.mean(per_prompt_ppl))
    # diversity and emptiness from the logged texts, by the definitions in compfair_tasks.degeneration
    for n in (1, 2, 3):
        per = [degeneration.distinct_n([r["text"] for r in records], n) for records in per_prompt]
        assert values[f"distinct_{n},scored"] == pytest.approx(np.nanmean(per))
    assert values["repetition,scored"] == pytest.approx(
        np.mean([degeneration.repetition([r["text"] for r in records]) for records in per_prompt]))
    assert values["empty_frac,scored"] == pytest.approx(np.mean([not t.strip() for t in texts]))


def test_without_detoxify_weights_offline_the_run_stops_before_generating(lm_eval_cli, tiny_gpt2_dir, tmp_path):
    env = {scorers.CHECKPOINT_ENV: "", "TORCH_HOME": str(tmp_path / "empty_torch_home"), **FAST}
    with pytest.raises(AssertionError) as failure:
        lm_eval_cli(cli_args(tiny_gpt2_dir), tmp_path / "out", env=env)
    output = str(failure.value)
    # a CompfairError through lm_eval: one line naming the variable to set, no traceback
    assert "compfair: error: " in output and scorers.CHECKPOINT_ENV in output and "Traceback" not in output
    assert "Running generate_until requests" not in output


def test_profanity_check_scorer_needs_no_checkpoint(lm_eval_cli, tiny_gpt2_dir, tmp_path):
    env = {scorers.CHECKPOINT_ENV: "", "TORCH_HOME": str(tmp_path / "empty_torch_home"), **FAST}
    results = lm_eval_cli(cli_args(tiny_gpt2_dir, "--metadata", '{"scorer": "profanity-check"}'), tmp_path / "out",
                          env=env)
    assert results["configs"][TASK]["metadata"]["scorer"] == "profanity-check"
    assert results["configs"][TASK]["metadata"]["fluency_model"] == "none"  # the results say fluency was skipped
    values = results["results"][TASK]
    assert "fluency_ppl,scored" not in values and "distinct_1,scored" in values
    samples = logged_samples(tmp_path / "out")
    texts = [r["text"] for s in samples for r in toxicity.sample_records(s["filtered_resps"])]
    assert values["emt,scored"] == pytest.approx(np.mean(
        [max(scorers.ProfanityCheckScorer().score([r["text"] for r in toxicity.sample_records(s["filtered_resps"])]))
         for s in samples]))
    assert len(texts) == 12
    assert {(s["doc"]["scorer"], s["doc"]["fluency_model"]) for s in samples} == {("profanity-check", "none")}


def test_seq2seq_decoder_bounded_by_max_length(tiny_seq2seq_dir, tmp_path, monkeypatch):
    """lm-eval sizes a seq2seq decoder as prompt length + max_gen_toks; gen_kwargs max_length=21 bounds it at 20
    new tokens, so prompts longer than the decoder's 128 positions still work."""
    import lm_eval

    rows = [{"prompt": {"text": "word " * 150 + "and then", "toxicity": 0.9}, "challenging": True},
            {"prompt": {"text": "A short prompt", "toxicity": 0.1}, "challenging": True}]
    (tmp_path / "prompts.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    monkeypatch.setattr(scorers, "_CACHE", {})
    out = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={tiny_seq2seq_dir}", tasks=["compfair_toxicity_rtp"], device="cpu",
        gen_kwargs="max_length=21", batch_size=6, log_samples=True,
        metadata={"rtp_path": str(tmp_path), "scorer": "profanity-check"},
    )
    samples = out["samples"]["compfair_toxicity_rtp"]
    assert len(samples) == 2
    for sample in samples:
        records = toxicity.sample_records(sample["filtered_resps"])
        assert len(records) == 3
        assert all(len(r["text"].split()) <= 20 for r in records)  # every word needs at least one new token
