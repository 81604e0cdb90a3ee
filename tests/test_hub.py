"""compfair_tasks.hub: one offline rule, and the evaluated model's tokenizer/config loaded as lm-eval's HFLM loads them."""

from __future__ import annotations

import pytest

from compfair_tasks import hub, preference


@pytest.mark.parametrize("variable", hub.OFFLINE_VARIABLES)
def test_each_offline_variable_counts_and_is_named(variable, monkeypatch):
    for name in hub.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert hub.offline() is None
    monkeypatch.setenv(variable, "0")
    assert hub.offline() is None
    monkeypatch.setenv(variable, "True")
    assert hub.offline() == variable


def test_options_follow_the_model_args(tiny_gpt2_dir, monkeypatch):
    seen = []
    from transformers import AutoTokenizer

    original = AutoTokenizer.from_pretrained
    monkeypatch.setattr(AutoTokenizer, "from_pretrained",
                        lambda name, **options: seen.append((name, options)) or original(name))
    hub.load_tokenizer({"pretrained": str(tiny_gpt2_dir), "gguf_file": "m.gguf", "revision": "main",
                        "trust_remote_code": "True"})
    assert seen[-1] == (str(tiny_gpt2_dir), {"trust_remote_code": True, "revision": "main", "gguf_file": "m.gguf"})
    # a separate tokenizer= is not inside the GGUF file (lm-eval passes gguf_file only without one)
    hub.load_tokenizer({"pretrained": "p", "tokenizer": str(tiny_gpt2_dir), "gguf_file": "m.gguf"})
    assert seen[-1] == (str(tiny_gpt2_dir), {"trust_remote_code": False})
    assert hub.load_tokenizer({}) is None


@pytest.mark.slow
def test_a_gguf_model_gets_token_counts_in_the_preference_tasks():
    """pretrained=<folder>,gguf_file=<file>: StereoSet/WinoBias used to fail with "cannot load the tokenizer"."""
    from compfair_tasks.models import EMBEDDED_MODELS, gguf_chunks

    try:
        [gguf] = gguf_chunks(EMBEDDED_MODELS["smollm2-135m"])
    except Exception as error:
        pytest.skip(f"the embedded GGUF is not installed: {error}")
    metadata = {"pretrained": str(gguf.parent), "gguf_file": gguf.name}
    counter = preference.token_counter(metadata)
    assert counter is not None and not counter.seq2seq
    assert counter.count("The nurse said", " that she") == len(counter.tokenizer(" that she")["input_ids"])
    assert hub.load_config(metadata).model_type == "llama"
