import json

import pytest

from compressors import metadata, text_data
from conftest import build_gpt2_tokenizer


def test_local_txt_jsonl_and_folder(tmp_path):
    (tmp_path / "a.txt").write_text("first line\n\n  second line \n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "third"}) + "\n" + json.dumps({"text": " "}) + "\n")
    assert text_data.load_texts(str(tmp_path / "a.txt")) == ["first line", "second line"]
    assert text_data.load_texts(str(tmp_path)) == ["first line", "second line", "third"]
    assert text_data.load_texts(str(tmp_path), limit=1) == ["first line"]


def test_fraction_is_seeded_and_keeps_order(tmp_path):
    (tmp_path / "t.txt").write_text("\n".join(f"text {i}" for i in range(100)))
    picked = text_data.load_texts(str(tmp_path / "t.txt"), fraction=0.1, seed=3)
    assert len(picked) == 10 and picked == sorted(picked, key=lambda t: int(t.split()[1]))
    assert picked == text_data.load_texts(str(tmp_path / "t.txt"), fraction=0.1, seed=3)
    assert picked != text_data.load_texts(str(tmp_path / "t.txt"), fraction=0.1, seed=4)


def test_shipped_bold_wiki_is_the_default_one_text_per_person(shipped_data):
    files = sorted((shipped_data / "bold_wiki").glob("*_wiki.json"))
    people = [sentences for f in files for group in json.loads(f.read_text()).values() for sentences in group.values()]
    texts = text_data.load_texts()
    assert len(texts) == len(people)  # every person has a sentence
    several = next(i for i, sentences in enumerate(people) if len(sentences) > 1)
    assert texts[several] == " ".join(s.strip() for s in people[several])  # all of a person's sentences
    assert texts[0].startswith("Jacob Zachar is an American actor")


def test_bad_sources_fail_clearly(tmp_path):
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="no text found"):
        text_data.load_texts(str(tmp_path / "empty.txt"))
    with pytest.raises(FileNotFoundError, match="neither a file nor a folder"):
        text_data.load_texts(str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="fraction"):
        text_data.load_texts(fraction=1.5)


def test_pack_blocks_separates_texts_with_eos_and_drops_the_remainder():
    tokenizer = build_gpt2_tokenizer()
    blocks = text_data.pack_blocks(["Hello world", "Hello"], tokenizer, block_size=2)
    # "Hello world" -> [15496, 995], EOS, "Hello" -> [15496], EOS: 5 ids, two full blocks
    assert blocks.tolist() == [[15496, 995], [50256, 15496]]
    with pytest.raises(ValueError, match="fewer than one block"):
        text_data.pack_blocks(["Hi"], tokenizer, block_size=64)


def test_compression_metadata_measures_the_checkpoint(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / "config.json").write_text("{}")
    record = metadata.write_compression_metadata(tmp_path, method="prune_heads", source_model="gpt2",
                                                 settings={"ratio": 0.05}, seed=1, removed={"0": [1]})
    assert record["size_bytes"] == 1000
    assert metadata.read_compression_metadata(tmp_path) == json.loads(json.dumps(record))
