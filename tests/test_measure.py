"""compfair_tasks.measure: one size rule (top-level model weights only) for compressors and the leaderboard."""

from __future__ import annotations

import json
from compfair_tasks.measure import checkpoint_size_bytes, weight_files
from compressors.metadata import write_compression_metadata


def fake_checkpoint(folder):
    """100 + 20 bytes of model weights, next to training state and intermediate checkpoints of 1000s of bytes."""
    (folder / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"w" * 100)
    (folder / "extra.gguf").write_bytes(b"g" * 20)
    (folder / "training_args.bin").write_bytes(b"t" * 7)
    (folder / "optimizer.pt").write_bytes(b"o" * 3000)
    (folder / "rng_state.pth").write_bytes(b"r" * 5)
    (folder / "config.json").write_text("{}")
    (folder / "checkpoints" / "checkpoint-2" / "model.safetensors").write_bytes(b"w" * 100)
    (folder / "checkpoints" / "checkpoint-2" / "optimizer.pt").write_bytes(b"o" * 2000)
    return folder


def test_size_counts_only_top_level_model_weights(tmp_path):
    checkpoint = fake_checkpoint(tmp_path)
    assert [p.name for p in weight_files(checkpoint)] == ["extra.gguf", "model.safetensors"]
    assert checkpoint_size_bytes(checkpoint) == 120


def test_compression_record_uses_that_size(tmp_path):
    record = write_compression_metadata(fake_checkpoint(tmp_path), method="distill", source_model="t", settings={},
                                        seed=0)
    assert record["size_bytes"] == 120


def test_leaderboard_measures_the_checkpoint_rather_than_trusting_an_old_record(tmp_path):
    from leaderboard_results import write_run

    from leaderboard.collect import collect

    checkpoint = fake_checkpoint(tmp_path / "student")
    # compfair before this fix counted checkpoints/ recursively: 5200 bytes
    (checkpoint / "compfair_compression.json").write_text(json.dumps({"method": "distill", "size_bytes": 5200}))
    write_run(tmp_path / "out", str(checkpoint), {"wikitext": {"word_perplexity": 1.0}})
    assert collect([tmp_path / "out"]).frame.at[0, "size_bytes"] == 120

