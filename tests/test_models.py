import pytest

from compfair_tasks import models


def test_unknown_model_and_missing_package_errors_name_the_fix(monkeypatch):
    with pytest.raises(models.ModelNotAvailableError, match="choose from smollm2-135m"):
        models.embedded_model_dir("gpt-5")
    monkeypatch.setattr(models, "_package_dir", lambda package: None)
    with pytest.raises(models.ModelNotAvailableError, match="requirements-offline.txt"):
        models.gguf_chunks(models.EMBEDDED_MODELS["smollm2-135m"])


def test_chunked_gguf_is_found_in_package_order():
    chunks = models.gguf_chunks(models.EMBEDDED_MODELS["gemma3-270m"])
    assert [c.name[-6:] for c in chunks] == ["part00", "part01", "part02", "part03"]


@pytest.mark.slow
def test_converted_checkpoint_reproduces_the_gguf_model():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = models.embedded_model_dir("smollm2-135m")
    gguf = models.gguf_chunks(models.EMBEDDED_MODELS["smollm2-135m"])[0]
    text = "The nurse said that she would be late."
    converted_tok = AutoTokenizer.from_pretrained(folder)
    gguf_tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    assert converted_tok(text)["input_ids"] == gguf_tok(text)["input_ids"]

    ids = torch.tensor([converted_tok(text)["input_ids"]])
    with torch.no_grad():
        converted = AutoModelForCausalLM.from_pretrained(folder)(ids).logits
        original = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                        dtype=torch.float32)(ids).logits
    assert torch.allclose(converted, original, atol=1e-5)
    assert (folder / "compfair_source.json").is_file()


def test_a_conversion_finished_by_another_process_first_is_kept(tmp_path, monkeypatch):
    """Parallel processes convert in private work folders; the first complete one wins, none crashes."""
    target = tmp_path / "smollm2-135m"

    def fake_assemble(chunks, destination):
        destination.write_bytes(b"gguf")
        return destination

    def fake_convert(gguf_path, work):
        (work / "config.json").write_text("{}")
        (work / "model.safetensors").write_bytes(b"ours")
        target.mkdir()  # meanwhile another process completes the same conversion
        (target / "config.json").write_text("{}")
        (target / "model.safetensors").write_bytes(b"theirs")

    monkeypatch.setattr(models, "gguf_chunks", lambda model: [tmp_path / "chunk"])
    monkeypatch.setattr(models, "_assemble", fake_assemble)
    monkeypatch.setattr(models, "_convert_gguf", fake_convert)
    assert models.embedded_model_dir("smollm2-135m", output_dir=target) == target
    assert (target / "model.safetensors").read_bytes() == b"theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["smollm2-135m"]  # no work folder left behind
