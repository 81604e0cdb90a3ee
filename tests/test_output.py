"""compressors/output.py: no compressor may overwrite or mix with a model (issue 12, section 1)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from compfair_tasks import cli
from compressors.output import OutputFolderError, prepare_output


def _digest(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _model_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"weights")
    return path


# --- the check itself, one case per rule ----------------------------------------------------------

@pytest.mark.parametrize("relation", ["same", "inside", "contains", "same_via_symlink", "same_via_dots"])
def test_output_overlapping_the_source_is_refused_even_with_overwrite(tmp_path, relation):
    source = _model_folder(tmp_path / "parent" / "src")
    output = {"same": source, "inside": source / "pruned", "contains": tmp_path / "parent",
              "same_via_dots": source / ".." / "src", "same_via_symlink": tmp_path / "link"}[relation]
    if relation == "same_via_symlink":
        output.symlink_to(source)
    before = _digest(tmp_path / "parent")
    for overwrite in (False, True):
        with pytest.raises(OutputFolderError, match="source model folder"):
            prepare_output(output, sources=[str(source)], overwrite=overwrite)
    assert _digest(tmp_path / "parent") == before


@pytest.mark.parametrize("marker", ["config.json", "model.safetensors", "compfair_compression.json",
                                    "compfair_quantized.safetensors", "pytorch_model.bin"])
def test_a_folder_holding_a_model_needs_overwrite_which_removes_only_checkpoint_files(tmp_path, marker):
    output = tmp_path / "out"
    output.mkdir()
    (output / marker).write_bytes(b"old")
    (output / "notes.txt").write_text("mine")
    (output / "sub").mkdir()
    (output / "sub" / "model.safetensors").write_bytes(b"nested")
    with pytest.raises(OutputFolderError, match=f"already holds a model.*{marker}.*--overwrite"):
        prepare_output(output, sources=["gpt2"])
    assert (output / marker).read_bytes() == b"old"
    assert prepare_output(output, sources=["gpt2"], overwrite=True) == output
    assert sorted(p.relative_to(output).as_posix() for p in output.rglob("*")) == [
        "notes.txt", "sub", "sub/model.safetensors"]


def test_an_existing_file_is_refused_and_overwrite_replaces_it_by_a_folder(tmp_path):
    output = tmp_path / "out"
    output.write_text("a file")
    with pytest.raises(OutputFolderError, match="existing file"):
        prepare_output(output)
    assert output.read_text() == "a file"
    prepare_output(output, overwrite=True)
    assert output.is_dir()


def test_a_folder_under_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputFolderError, match="is a file"):
        prepare_output(tmp_path / "f" / "out")


def test_a_fresh_or_empty_folder_is_accepted_and_created(tmp_path):
    assert prepare_output(tmp_path / "a" / "b", sources=[tmp_path / "missing", "gpt2"]).is_dir()
    (tmp_path / "empty").mkdir()
    prepare_output(tmp_path / "empty")


def test_resuming_may_write_into_its_own_model_folder_but_never_into_the_source(tmp_path):
    output = _model_folder(tmp_path / "run")
    prepare_output(output, sources=["gpt2"], resuming=True)
    with pytest.raises(OutputFolderError):
        prepare_output(output, sources=[output], resuming=True)


# --- every compressor CLI runs the check before it writes anything ---------------------------------

COMPRESSORS = {
    "prune": ["compress", "prune", "--num-examples", "8", "--block-size", "16", "--min-blocks", "1",
              "--iterations", "1", "--ratio", "0.25"],
    "quantize": ["compress", "quantize", "--latency-batch", "0"],
}


@pytest.mark.parametrize("command", sorted(COMPRESSORS))
@pytest.mark.parametrize("relation", ["same", "inside", "holds_model", "file"])
def test_compressor_refuses_an_unsafe_output_and_leaves_the_source_intact(tiny_gpt2_dir, tmp_path, command,
                                                                          relation, capsys):
    import shutil

    source = Path(shutil.copytree(tiny_gpt2_dir, tmp_path / "src"))
    other = _model_folder(tmp_path / "other")
    (tmp_path / "file").write_text("keep")
    output = {"same": source, "inside": source / "out", "holds_model": other, "file": tmp_path / "file"}[relation]
    before = _digest(tmp_path)
    code = cli.main([*COMPRESSORS[command], "--model", str(source), "--output", str(output)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(output) in err[0], err
    assert _digest(tmp_path) == before


@pytest.mark.parametrize("command", sorted(COMPRESSORS))
def test_compressor_overwrite_replaces_an_earlier_result(tiny_gpt2_dir, tmp_path, command):
    output = _model_folder(tmp_path / "out")
    (output / "stale.safetensors").write_bytes(b"stale")
    args = [*COMPRESSORS[command], "--model", str(tiny_gpt2_dir), "--output", str(output)]
    assert cli.main(args) == 2
    assert cli.main([*args, "--overwrite"]) == 0
    assert not (output / "stale.safetensors").exists()
    assert (output / "compfair_compression.json").is_file()
