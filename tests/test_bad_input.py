"""Bad input gets one line naming the file and the fix, and exit 2 (issue 12, sections 3 and 4)."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest

from compfair_tasks import (
    cli,
    crows_pairs,
    data,
    models,
    perplexity,
    stereoset,
    winobias,
)
from compfair_tasks.errors import CompfairError

SHIPPED = Path(data.__file__).parent / "data"


# --- the CLI boundary -----------------------------------------------------------------------------

@pytest.fixture
def fake_command(monkeypatch):
    import sys

    def install(function):
        monkeypatch.setitem(cli.COMMANDS, ("fake",), (f"{__name__}:_fake", "test"))
        monkeypatch.setattr(sys.modules[__name__], "_fake", function, raising=False)
    return install


def test_a_known_error_prints_one_line_and_exits_2(fake_command, capsys):
    def fail(argv):
        raise data.DataFormatError("x.json:3:1: broken; re-copy it")
    fake_command(fail)
    assert cli.main(["fake"]) == 2
    assert capsys.readouterr().err == "compfair fake: error: x.json:3:1: broken; re-copy it\n"


def test_an_unknown_error_keeps_its_traceback(fake_command):
    def fail(argv):
        raise RuntimeError("a bug")
    fake_command(fail)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["fake"])


@pytest.mark.parametrize("argv, word", [(["compres"], "compres"), (["compress", "prnue"], "prnue"),
                                        (["leaderbord", "x"], "leaderbord")])
def test_an_unknown_command_names_the_bad_word(argv, word, capsys):
    assert cli.main(argv) == 2
    assert f"unknown command {word!r}" in capsys.readouterr().err


def test_compress_help_lists_its_subcommands(capsys):
    assert cli.main(["compress", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"compress {name}" in out for name in ("distill", "prune", "quantize")) and "leaderboard" not in out


# --- dataset files: empty, truncated, UTF-16, latin-1, zero rows, each names the file ---------------

def _stereoset(folder):
    return stereoset.load_all(stereoset_path=str(folder), preference_score="sum")


def _winobias(folder):
    return winobias.load_all(winobias_path=str(folder), preference_score="sum")


def _crows(folder):
    return crows_pairs.load(crows_pairs_path=str(folder))


def _bold(folder):
    return perplexity.load_bold_wiki(bold_wiki_path=str(folder))


DATASET_FILES = {  # dataset -> (shipped folder, the file to damage, loader)
    "stereoset": ("stereoset", "dev.json", _stereoset),
    "winobias": ("winobias", "pro_stereotyped_type1.txt.dev", _winobias),
    "crows_pairs": ("crows_pairs", "crows_pairs_anonymized.csv", _crows),
    "bold_wiki": ("bold_wiki", "gender_wiki.json", _bold),
}


def _damage(original: bytes, how: str) -> bytes:
    text = original.decode("utf-8")
    if how == "empty":
        return b""
    if how == "truncated":
        return original[: len(original) // 2]
    if how == "utf16":
        return text.encode("utf-16")
    if how == "latin1":  # a non-ASCII character in latin-1 (the shipped files are mostly ASCII)
        return ("é" + text).encode("latin-1", errors="replace")
    raise ValueError(how)


@pytest.mark.parametrize("how", ["empty", "truncated", "utf16", "latin1"])
@pytest.mark.parametrize("dataset", sorted(DATASET_FILES))
def test_a_damaged_dataset_file_is_one_line_naming_it(tmp_path, dataset, how):
    folder_name, file_name, load = DATASET_FILES[dataset]
    folder = Path(shutil.copytree(SHIPPED / folder_name, tmp_path / folder_name))
    target = folder / file_name
    target.write_bytes(_damage(target.read_bytes(), how))
    with pytest.raises(data.DataFormatError) as caught:
        load(folder)
    message = str(caught.value)
    assert str(target) in message and "\n" not in message, message
    expected = {"empty": "empty", "utf16": "UTF-16", "latin1": "not UTF-8"}.get(how)
    if expected:
        assert expected in message
    if how == "latin1":
        assert f"{target}:1:" in message


def test_a_truncated_json_names_the_line(tmp_path):
    path = tmp_path / "dev.json"
    path.write_text('{"data": {\n  "intrasentence": [\n    {"id": "a",')
    with pytest.raises(data.DataFormatError, match=rf"{path}:3:\d+: .*not valid JSON"):
        data.read_json(path)


@pytest.mark.parametrize("dataset", ["stereoset", "winobias", "crows_pairs", "bold_wiki"])
def test_a_dataset_with_zero_rows_is_an_error_not_an_index_error(tmp_path, dataset):
    folder_name, file_name, load = DATASET_FILES[dataset]
    folder = Path(shutil.copytree(SHIPPED / folder_name, tmp_path / folder_name))
    if dataset == "stereoset":
        (folder / file_name).write_text(json.dumps({"version": "1.0", "data": {"intrasentence": [],
                                                                               "intersentence": []}}))
    elif dataset == "winobias":
        (folder / file_name).write_text("\n\n")
    elif dataset == "crows_pairs":
        (folder / file_name).write_text(",sent_more,sent_less,stereo_antistereo,bias_type\n")
    else:
        for file in folder.glob("*_wiki.json"):
            file.write_text("{}")
    with pytest.raises(CompfairError, match="no (rows|sentences|pairs|BOLD)|is empty"):
        load(folder)


# --- .jsonl text for the compressors ----------------------------------------------------------------

def test_jsonl_without_a_text_field_names_the_file_and_line(tmp_path):
    from compressors.text_data import load_texts

    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "fine"}\n\n{"body": "no text field"}\n')
    with pytest.raises(data.DataFormatError, match=rf"{path}:3: no 'text' field \(it has body\)"):
        load_texts(str(path))


@pytest.mark.parametrize("bad_line, number", [('{"text": "cut', 4), ("not json", 2)])
def test_a_malformed_jsonl_line_names_the_file_and_its_line_number(tmp_path, bad_line, number):
    from compressors.text_data import load_texts

    path = tmp_path / "t.jsonl"
    lines = ['{"text": "a"}', '{"text": "b"}', "", '{"text": "c"}']
    lines.insert(number - 1, bad_line)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(data.DataFormatError, match=rf"{path}:{number}: not a JSON line"):
        load_texts(str(path))


# --- where the data came from, and misspelt metadata keys -------------------------------------------

def test_each_dataset_source_is_recorded_with_its_sha256(tmp_path, monkeypatch):
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    explicit = Path(shutil.copytree(SHIPPED / "stereoset", tmp_path / "mine"))
    with data.recording() as sources:
        data.resolve("stereoset", explicit)
        data.resolve("winobias")
    digest = hashlib.sha256((explicit / "dev.json").read_bytes()).hexdigest()
    assert sources[0] == {"dataset": "stereoset", "source": "path", "location": str(explicit),
                          "sha256": {"dev.json": digest}}
    assert sources[1]["source"] == "shipped" and len(sources[1]["sha256"]) == 8


def test_the_hook_puts_the_sources_in_the_task_config(monkeypatch):
    import types

    from compfair_tasks import _hook

    def load(**metadata):
        data.resolve("crows_pairs")
        return {"test": []}
    load.__module__ = "compfair_tasks.fake"

    class ConfigurableTask:
        def __init__(self):
            self.config = types.SimpleNamespace(custom_dataset=load, metadata={"version": 1})

        def download(self, dataset_kwargs=None):
            self.dataset = self.config.custom_dataset(**self.config.metadata)

    _hook._record_data_sources(types.SimpleNamespace(ConfigurableTask=ConfigurableTask))
    task = ConfigurableTask()
    task.download()
    (record,) = task.config.metadata["data_sources"]
    csv_path = SHIPPED / "crows_pairs" / "crows_pairs_anonymized.csv"
    assert record["source"] == "shipped"
    assert record["sha256"] == {csv_path.name: hashlib.sha256(csv_path.read_bytes()).hexdigest()}


def test_a_data_dir_that_lacks_a_dataset_warns_which_copy_is_used(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path))
    (tmp_path / "stereoset").mkdir()
    with caplog.at_level(logging.WARNING, logger="compfair_tasks.data"):
        source = data.resolve("stereoset")
    assert source.kind == "shipped"
    assert f"{data.ENV_VAR} is set" in caplog.text and "dev.json" in caplog.text and "shipped" in caplog.text


@pytest.mark.parametrize("key, suggestion", [("stereoset_pth", "stereoset_path"), ("winobias_dir", "winobias_path"),
                                             ("crowspairs_path", "crows_pairs_path"), ("scorer_devcie", "scorer_device"),
                                             ("preference_scores", "preference_score"), ("bold_wiki_pth", "bold_wiki_path"),
                                             ("bold_pth", "bold_path"), ("bold_per_grup", "bold_per_group")])
def test_a_misspelt_compfair_metadata_key_is_refused(key, suggestion):
    with pytest.raises(data.MetadataKeyError, match=f"{key!r}: did you mean {suggestion!r}"):
        stereoset.load_all(**{key: "x"})


@pytest.mark.parametrize("key", ["pretrained", "dtype", "device", "batch_size", "peft_path", "version", "dataset",
                                 "max_length", "trust_remote_code", "stereoset_path", "scorer"])
def test_other_metadata_keys_pass(key):
    data.check_metadata({key: "x"})


# --- models: one resolver for "model name or folder" ------------------------------------------------

def test_an_embedded_model_name_resolves_to_its_folder(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "embedded_model_dir", lambda name: tmp_path / name)
    monkeypatch.chdir(tmp_path)
    assert models.resolve_model("smollm2-135m") == str(tmp_path / "smollm2-135m")


@pytest.mark.parametrize("case, match", [("missing", "no such folder"), ("file", "is a file"),
                                         ("no_config", "no config.json"), ("int8", "compfair-quantized"),
                                         ("int8_by_record", "compfair-quantized")])
def test_a_model_argument_that_cannot_load_says_why(tmp_path, case, match):
    target = tmp_path / "m"
    if case == "file":
        target.write_text("x")
    elif case != "missing":
        target.mkdir()
        if case != "no_config":
            (target / "config.json").write_text("{}")
        if case == "int8":
            (target / "compfair_quantized.safetensors").write_bytes(b"")
        if case == "int8_by_record":
            (target / "compfair_compression.json").write_text('{"method": "quantize_int8_dynamic"}')
    with pytest.raises(models.ModelNotAvailableError, match=match):
        models.resolve_model(str(target))


@pytest.mark.parametrize("command", [["compress", "prune"], ["compress", "quantize"]])
@pytest.mark.parametrize("case", ["missing", "int8"])
def test_prune_and_quantize_explain_a_bad_model_in_one_line(tmp_path, command, case, capsys):
    target = tmp_path / "m"
    if case == "int8":
        target.mkdir()
        (target / "config.json").write_text("{}")
        (target / "compfair_quantized.safetensors").write_bytes(b"")
    assert cli.main([*command, "--model", str(target), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(target) in err[0]
    assert not (tmp_path / "out").exists()


# --- encoder-only and other non-LM models are refused by every task ----------------------------------

def _save_config(folder: Path, config) -> str:
    config.save_pretrained(folder)
    return str(folder)


@pytest.fixture
def bert_dir(tmp_path):
    from transformers import BertConfig

    config = BertConfig(vocab_size=100, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=8, architectures=["BertForMaskedLM"])
    return _save_config(tmp_path / "bert", config)


LOADERS = {
    "stereoset": lambda m: stereoset.load_all(**m),
    "winobias": lambda m: winobias.load_all(**m),
    "crows_pairs": lambda m: crows_pairs.load(**m),
    "perplexity": lambda m: perplexity.load_bold_wiki(**m),
}


@pytest.mark.parametrize("task", sorted(LOADERS))
def test_every_task_refuses_an_encoder_only_model_naming_it(bert_dir, task):
    with pytest.raises(models.ModelNotAvailableError, match=r"not a causal or seq2seq.*'bert'.*BertForMaskedLM"):
        LOADERS[task]({"pretrained": bert_dir, "prefix_token_id": 0})


def test_a_classifier_head_is_refused(tmp_path):
    from transformers import GPT2Config

    folder = _save_config(tmp_path / "clf", GPT2Config(n_layer=1, architectures=["GPT2ForSequenceClassification"]))
    with pytest.raises(models.ModelNotAvailableError, match="GPT2ForSequenceClassification"):
        models.check_task_model({"pretrained": folder}, "t")


def test_a_bert_configured_as_decoder_is_causal(tmp_path):
    from transformers import BertConfig

    folder = _save_config(tmp_path / "d", BertConfig(is_decoder=True, architectures=["BertLMHeadModel"]))
    assert models.check_task_model({"pretrained": folder}, "t") == "causal"


def test_causal_and_seq2seq_models_pass(tiny_gpt2_dir, tiny_seq2seq_dir):
    assert models.check_task_model({"pretrained": str(tiny_gpt2_dir)}, "t") == "causal"
    assert models.check_task_model({"pretrained": str(tiny_seq2seq_dir)}, "t") == "seq2seq"
    assert models.check_task_model({}, "t") is None


@pytest.mark.parametrize("text, match", [("{scorer: x}", "not valid JSON"), ("[1]", "JSON object"),
                                         ('{"stereoset_pth": "x"}', "did you mean 'stereoset_path'")])
def test_compare_rejects_bad_metadata_json_in_one_line(text, match, capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(["compare", "gpt2", "--dry-run", "--metadata", text])
    assert caught.value.code == 2
    assert match in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("value", [0, -1, "2.5", "x"])
def test_max_gen_toks_below_one_is_refused(value):
    with pytest.raises(models.GenerationSettingsError, match="max_gen_toks"):
        models.check_generation_kwargs("t", {"max_gen_toks": value})
    models.check_generation_kwargs("t", {"max_gen_toks": 20})
    models.check_generation_kwargs("t", {})


# --- the same through the real lm_eval command: one line, non-zero exit ----------------------------

def _tiny_bert(folder: Path) -> Path:
    from transformers import BertConfig, BertForMaskedLM

    from conftest import build_gpt2_tokenizer

    BertForMaskedLM(BertConfig(vocab_size=50257, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=16)).save_pretrained(folder)
    build_gpt2_tokenizer().save_pretrained(folder)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("case", ["int8_as_hf", "bert", "max_gen_toks_0", "metadata_typo"])
def test_lm_eval_prints_compfair_errors_in_one_line(tiny_gpt2_dir, tmp_path, case):
    import os
    import subprocess
    import sys

    from conftest import OFFLINE_ENV

    model, task, extra = str(tiny_gpt2_dir), "compfair_winobias_type1", []
    if case == "int8_as_hf":
        model = str(tmp_path / "int8")
        Path(model).mkdir()
        (Path(model) / "config.json").write_text('{"model_type": "gpt2"}')
        (Path(model) / "compfair_quantized.safetensors").write_bytes(b"")
        match = "compfair-quantized"
    elif case == "bert":
        model, extra, match = str(_tiny_bert(tmp_path / "bert")), [], "not a causal or seq2seq"
        model += ",prefix_token_id=0"
    elif case == "max_gen_toks_0":
        task = "compfair_toxicity_rtp_offline"
        extra = ["--gen_kwargs", "max_gen_toks=0", "--metadata", '{"scorer": "profanity-check"}']
        match = "max_gen_toks=0"
    else:
        extra, match = ["--metadata", '{"winobias_pth": "/x"}'], "did you mean 'winobias_path'"
    done = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={model}",
                           "--tasks", task, "--limit", "2", *extra], env={**os.environ, **OFFLINE_ENV},
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("compfair: error:") and match in last, done.stderr[-2000:]
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("case", ["missing", "int8"])
def test_distill_explains_a_bad_teacher_in_one_line(tmp_path, case, capsys):
    target = tmp_path / "t"
    if case == "int8":
        target.mkdir()
        (target / "config.json").write_text('{"model_type": "gpt2"}')
        (target / "compfair_quantized.safetensors").write_bytes(b"")
    assert cli.main(["compress", "distill", "--teacher", str(target), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(target) in err[0] and ("no such folder" if case == "missing" else "int8") in err[0]


@pytest.mark.parametrize("architectures", [None, ["BertLMHeadModel"]])
def test_a_bert_without_is_decoder_is_refused_whatever_its_head(tmp_path, architectures):
    from transformers import BertConfig

    folder = _save_config(tmp_path / "b", BertConfig(architectures=architectures))
    with pytest.raises(models.ModelNotAvailableError, match="encoder-only"):
        models.check_task_model({"pretrained": folder}, "t")


# --- the shared option types (compfair_tasks.options): bad values stop at parse time --------------

def _parse_option(kind, text):
    import argparse

    parser = argparse.ArgumentParser(prog="x", exit_on_error=False)
    parser.add_argument("--v", type=kind)
    return parser.parse_args(["--v", text]).v


@pytest.mark.parametrize("kind, text, message", [
    ("positive_int", "0", "0 is out of range; give an integer >= 1"),
    ("positive_int", "-3", "give an integer >= 1"),
    ("positive_int", "2.5", "'2.5' is not a number; give an integer >= 1"),
    ("nonnegative_int", "-1", "give an integer >= 0"),
    ("fraction_open", "1", "give a number in (0, 1)"),
    ("fraction_open", "0", "give a number in (0, 1)"),
    ("fraction_open", "nan", "'nan' is not a finite number"),
    ("positive_float", "inf", "'inf' is not a finite number"),
    ("positive_float", "0", "give a number > 0"),
    ("device", "tpu9", "'tpu9' is not a torch device"),
    ("dtype_name", "float99", "'float99' is not a float dtype"),
    ("dtype_name", "int8", "is not a float dtype"),
    ("existing_path", "/no/such/file", "/no/such/file does not exist"),
    ("folder_path", __file__ + "/sub", "is a file, not a folder"),
])
def test_an_option_type_refuses_a_bad_value_naming_the_fix(kind, text, message):
    import argparse

    from compfair_tasks import options

    with pytest.raises(argparse.ArgumentError, match="argument --v: ") as error:
        _parse_option(getattr(options, kind), text)
    assert message in str(error.value)


@pytest.mark.parametrize("kind, text, value", [
    ("positive_int", "7", 7), ("nonnegative_int", "0", 0), ("fraction_open", "0.5", 0.5), ("device", "cpu", "cpu"),
    ("dtype_name", "bfloat16", "bfloat16"), ("dtype_name", "auto", "auto"), ("folder_path", "new/sub", Path("new/sub")),
])
def test_an_option_type_passes_a_good_value(kind, text, value):
    from compfair_tasks import options

    assert _parse_option(getattr(options, kind), text) == value


def test_device_refuses_an_accelerator_this_torch_lacks(monkeypatch):
    import argparse

    import torch

    from compfair_tasks import options

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(argparse.ArgumentError, match="no usable cuda device; give cpu"):
        _parse_option(options.device, "cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert _parse_option(options.device, "cuda:0") == "cuda:0"
    with pytest.raises(argparse.ArgumentError, match="has 1 cuda device"):
        _parse_option(options.device, "cuda:1")


# --- every command's options: a bad value stops at parse time, before any model loads (issue 20) ----------

def _run_cli(argv, capsys) -> tuple[int, str]:
    try:
        code = cli.main(argv)
    except SystemExit as caught:  # argparse
        code = caught.code
    return code, capsys.readouterr().err


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any model load fails the test: the options must be refused before."""
    from transformers import AutoModelForCausalLM

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad option was refused")
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)


MODEL_OUT = ["--model", "{model}", "--output", "{out}"]
BAD_OPTIONS = [
    (["compress", "quantize", *MODEL_OUT, "--method", "gptq", "--group-size", "0"], "--group-size: 0 is out of range"),
    (["compress", "quantize", *MODEL_OUT, "--method", "rtn", "--group-size", "-64"], "give an integer >= 1"),
    (["compress", "quantize", *MODEL_OUT, "--method", "gptq", "--block-size", "0"], "--block-size: 0 is out of range"),
    (["compress", "quantize", *MODEL_OUT, "--method", "gptq", "--num-examples", "-1"], "--num-examples: -1"),
    (["compress", "quantize", *MODEL_OUT, "--latency-tokens", "-5"], "--latency-tokens: -5 is out of range"),
    (["compress", "quantize", *MODEL_OUT, "--latency-tokens", "99999999999"], "give an integer in [1, 65536]"),
    (["compress", "quantize", *MODEL_OUT, "--latency-tokens", "4096", "--latency-batch", "64"], "past 65536 tokens"),
    (["compress", "quantize", *MODEL_OUT, "--latency-tokens", "2048"], "exceeds the model's context of 512"),
    (["compress", "quantize", *MODEL_OUT, "--latency-batch", "-1"], "--latency-batch: -1 is out of range"),
    (["compress", "quantize", *MODEL_OUT, "--bits", "3", "--method", "gptq"], "invalid choice: 3"),
    (["compress", "quantize", *MODEL_OUT, "--method", "torchao-int8", "--bits", "8"], "--bits is for --method gptq"),
    (["compress", "quantize", *MODEL_OUT, "--method", "rtn", "--mode", "weight-only"], "--mode is for --method int8"),
    (["compress", "quantize", *MODEL_OUT, "--seed", "-1"], "--seed: -1 is out of range"),
    (["compress", "sparsify", *MODEL_OUT, "--method", "wanda", "--num-examples", "0"], "--num-examples: 0 is out"),
    (["compress", "sparsify", *MODEL_OUT, "--method", "wanda", "--block-size", "5000"], "context of 512 tokens"),
    (["compress", "sparsify", *MODEL_OUT, "--sparsity", "nan"], "'nan' is not a finite number"),
    (["compress", "sparsify", *MODEL_OUT, "--sparsity", "0"], "give a number in (0, 1)"),
    (["compress", "sparsify", *MODEL_OUT, "--pattern", "2:4", "--sparsity", "0.5"], "not allowed with argument"),
    (["compress", "sparsify", *MODEL_OUT, "--pattern", "2:x"], "--pattern must look like N:M"),
    (["compress", "prune", *MODEL_OUT, "--batch-size", "0"], "--batch-size: 0 is out of range"),
    (["compress", "prune", *MODEL_OUT, "--device", "tpu9"], "'tpu9' is not a torch device"),
    (["compress", "prune", *MODEL_OUT, "--iterations", "0"], "--iterations: 0 is out of range"),
    (["compress", "prune", *MODEL_OUT, "--num-examples", "-2"], "--num-examples: -2 is out of range"),
    (["compress", "prune", *MODEL_OUT, "--block-size", "1000"], "exceeds the model's context of 512"),
    (["compress", "distill", "--teacher", "{model}", "--output", "{out}", "--epochs", "-1"], "--epochs: -1 is out"),
    (["compress", "distill", "--teacher", "{model}", "--output", "{out}", "--save-steps", "0"], "--save-steps: 0"),
    (["compress", "distill", "--teacher", "{model}", "--output", "{out}", "--max-steps", "0"], "--max-steps: 0"),
    (["compress", "distill", "--teacher", "{model}", "--output", "{out}", "--lr", "inf"], "not a finite number"),
    (["compress", "distill", "--teacher", "{model}", "--output", "{out}", "--data-fraction", "1.5"], "in (0, 1]"),
    (["compress", "distill", "--teacher", "{model}", "--output", "{out}", "--layers", "0,0"], "strictly increasing"),
    (["compress", "distill", "--teacher", "{model}", "--output", "{out}", "--layers", "0,7"], "outside the teacher"),
    (["compress", "distill", "--teacher", "{model}", "--output", "{out}", "--num-layers", "5"], "not smaller"),
    (["compress", "distill", "--teacher", "{model}", "--output", "{out}", "--preset", "Q"], "unknown preset 'Q'"),
    (["compress", "distill", "--teacher", "{model}", "--output", "{out}", "--block-size", "4096"], "context of 512"),
    (["compress", "distill", "--teacher", "{model}", "--output", "{out}", "--alpha-ce", "0", "--alpha-clm", "0"],
     "not all zero"),
    (["demo", "--limit", "0", "--output", "{out}"], "--limit: 0 is out of range"),
    (["demo", "--output", "{file}"], "is a file, not a folder"),
    (["compare", "gpt2", "--dry-run", "--limit", "0"], "--limit: 0 is out of range"),
    (["compare", "gpt2", "--dry-run", "--batch-size", "-4"], "'-4' is not a batch size"),
    (["compare", "gpt2", "--dry-run", "--device", "tpu9"], "'tpu9' is not a torch device"),
    (["compare", "gpt2", "--dry-run", "--dtype", "float99"], "'float99' is not a float dtype"),
    (["compare", "gpt2", "--dry-run", "--output", "{file}"], "is a file, not a folder"),
]


@pytest.mark.parametrize("argv, message", BAD_OPTIONS, ids=[" ".join(a[:2]) + " " + a[-2] for a, _ in BAD_OPTIONS])
def test_a_bad_option_exits_2_in_one_line_before_any_model_loads(argv, message, tiny_gpt2_dir, tmp_path, capsys,
                                                                 no_model_loads):
    (tmp_path / "a_file").write_text("x")
    values = {"model": str(tiny_gpt2_dir), "out": str(tmp_path / "out"), "file": str(tmp_path / "a_file")}
    code, err = _run_cli([word.format(**values) for word in argv], capsys)
    assert code == 2 and message in err, err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


# --- a run that changed nothing is a failure, never a saved "compressed" model (issue 20) ----------------

def test_the_changed_nothing_rule_names_what_was_measured():
    from compressors.verify import NothingChangedError, refuse_unchanged

    refuse_unchanged("x", layers_changed=3, equal_to_source=False, steps=10)  # changed: passes
    refuse_unchanged("x")  # nothing measured: passes
    for measured, reason in (({"layers_changed": 0}, "0 layers changed"), ({"steps": 0}, "0 training steps"),
                             ({"equal_to_source": True}, "its weights equal the source's")):
        with pytest.raises(NothingChangedError, match=f"x changed nothing .{reason}., so nothing was kept; fix"):
            refuse_unchanged("x", **measured, fix="fix")


def test_prune_that_can_remove_no_head_fails_and_writes_nothing(tmp_path, capsys):
    from tests.conftest import save_tiny_gpt2

    one_head = save_tiny_gpt2(tmp_path / "one_head", n_head=1)  # every layer is down to its last head
    output, text = tmp_path / "out", tmp_path / "text.txt"
    text.write_text("\n".join(f"Sentence number {i} talks about the history of a town." for i in range(20)))
    code, err = _run_cli(["compress", "prune", "--model", str(one_head), "--output", str(output), "--data", str(text),
                          "--num-examples", "20", "--block-size", "16", "--iterations", "1"], capsys)
    assert code == 2 and "changed nothing (0 layers changed)" in err and "--allow-empty-layers" in err
    assert not output.exists() or not any(output.iterdir())


def test_compare_names_a_missing_model_folder_as_missing(tmp_path):
    from leaderboard import compare

    with pytest.raises(compare.PreflightError, match="no such folder"):
        compare.check_model(str(tmp_path / "nowhere"))
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(compare.PreflightError, match="no such folder"):
        compare.check_model(str(tmp_path / "a_file"))


@pytest.mark.parametrize("command", [["compress", "sparsify", "--method", "wanda"],
                                     ["compress", "quantize", "--method", "gptq"]])
def test_missing_calibration_text_is_refused_before_the_model_loads(command, tiny_gpt2_dir, tmp_path, capsys,
                                                                     no_model_loads):
    code, err = _run_cli([*command, "--model", str(tiny_gpt2_dir), "--output", str(tmp_path / "out"),
                          "--data", str(tmp_path / "missing.txt")], capsys)
    assert code == 2 and "missing.txt' is neither a file nor a folder" in err, err
