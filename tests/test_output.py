"""compressors/output.py: a compressor replaces only what compfair provably wrote, and only after its new
output passed its checks (issue 12 section 1; issue 20 "data loss" and "SIGKILL during a save")."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from compfair_tasks import cli
from compressors.output import MARKER, OutputFolderError, ownership, prepare_output, staged_output


def _digest(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _model_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"weights")
    return path


def _compfair_output(path: Path) -> Path:
    """A finished output as compfair writes it (marker listing its files)."""
    with staged_output(path, writer="test") as staged:
        (staged / "config.json").write_text("{}")
        (staged / "model.safetensors").write_bytes(b"old weights")
        (staged / "compfair_compression.json").write_text("{}")
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


def _fake_hub_cache(root: Path) -> Path:
    """An HF hub cache holding gpt2 as the hub lays it out: refs/main -> snapshots/<commit>/ -> ../../blobs/."""
    repo = root / "models--gpt2"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "blobs").mkdir()
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, blob in (("config.json", b"{}"), ("model.safetensors", b"cached weights")):
        (repo / "blobs" / hashlib.sha256(blob).hexdigest()).write_bytes(blob)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", hashlib.sha256(blob).hexdigest()))
    return snapshot


@pytest.mark.parametrize("where", ["snapshot", "blobs", "elsewhere_in_cache"])
def test_a_hub_id_source_is_resolved_to_its_cache_and_the_cache_is_never_an_output(tmp_path, monkeypatch, where):
    """Issue 20: `sparsify --model gpt2 --output <the HF cache snapshot of gpt2> --overwrite` emptied the cache."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    snapshot = _fake_hub_cache(tmp_path / "hub")
    output = {"snapshot": snapshot, "blobs": snapshot.parents[1] / "blobs",
              "elsewhere_in_cache": tmp_path / "hub" / "new"}[where]
    before = _digest(tmp_path / "hub")
    with pytest.raises(OutputFolderError, match="source model folder" if where == "snapshot" else "cache"):
        prepare_output(output, sources=["gpt2"], overwrite=True)
    assert _digest(tmp_path / "hub") == before


@pytest.mark.parametrize("contents", [["tokenizer.json"], ["generation_config.json"], ["notes.txt"],
                                      ["config.json", "model.safetensors"], ["sub/model.safetensors"]])
def test_a_non_empty_folder_compfair_did_not_write_is_refused_even_with_overwrite(tmp_path, contents):
    """Issue 20: a folder of tokenizer/generation files or notes was overwritten, exit 0; a bare model too."""
    output = tmp_path / "out"
    for name in contents:
        (output / name).parent.mkdir(parents=True, exist_ok=True)
        (output / name).write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(OutputFolderError, match="compfair did not write"):
            prepare_output(output, overwrite=overwrite)
    assert _digest(output) == {name: hashlib.sha256(b"mine").hexdigest() for name in contents}


def test_the_working_directory_or_a_folder_containing_it_is_refused(tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    for given in (".", str(tmp_path), ".."):
        with pytest.raises(OutputFolderError, match="current folder"):
            prepare_output(given, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_compfair_output_needs_overwrite_and_a_user_file_in_it_makes_it_not_ours(tmp_path):
    output = _compfair_output(tmp_path / "out")
    assert json.loads((output / MARKER).read_text())["files"] == [
        "compfair_compression.json", "config.json", "model.safetensors"]
    with pytest.raises(OutputFolderError, match="already holds a compfair output.*--overwrite"):
        prepare_output(output)
    assert prepare_output(output, overwrite=True) == output
    (output / "NOTES.md").write_text("mine")
    with pytest.raises(OutputFolderError, match="files compfair did not write.*NOTES.md"):
        prepare_output(output, overwrite=True)


def test_another_command_s_unfinished_run_is_replaced_only_with_overwrite(tmp_path):
    from compressors.output import mark_unfinished

    run = tmp_path / "student"
    mark_unfinished(run, "compfair compress distill")
    mark_unfinished(run / "checkpoints", "compfair compress distill")
    (run / "checkpoints" / "checkpoint-2").mkdir()
    (run / "checkpoints" / "checkpoint-2" / "model.safetensors").write_bytes(b"hours of training")
    assert ownership(run, also_ours=("checkpoints",)) == (True, "unfinished")
    with pytest.raises(OutputFolderError, match="unfinished run of compfair compress distill.*--overwrite"):
        prepare_output(run)
    prepare_output(run, resuming=True)
    prepare_output(run, overwrite=True)


def test_an_older_compfair_output_counts_as_ours_only_with_nothing_but_checkpoint_files(tmp_path):
    """Migration: outputs of compfair before the marker hold compfair_compression.json, which compfair wrote."""
    output = _model_folder(tmp_path / "old")
    (output / "compfair_compression.json").write_text("{}")
    (output / "tokenizer.json").write_text("{}")
    assert ownership(output) == (True, "complete")
    prepare_output(output, overwrite=True)
    (output / "analysis.ipynb").write_text("mine")
    with pytest.raises(OutputFolderError, match="older compfair output.*analysis.ipynb"):
        prepare_output(output, overwrite=True)


def test_an_existing_file_is_refused_even_with_overwrite(tmp_path):
    output = tmp_path / "out"
    output.write_text("a file")
    for overwrite in (False, True):
        with pytest.raises(OutputFolderError, match="existing file"):
            prepare_output(output, overwrite=overwrite)
    assert output.read_text() == "a file"


def test_a_folder_under_a_file_or_in_a_read_only_folder_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputFolderError, match="is a file"):
        prepare_output(tmp_path / "f" / "out")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: permissions are not enforced")
        with pytest.raises(OutputFolderError, match="not writable"):
            prepare_output(locked / "out")
    finally:
        locked.chmod(0o755)


def test_a_fresh_or_empty_folder_is_accepted_and_nothing_is_written(tmp_path):
    assert prepare_output(tmp_path / "a" / "b", sources=[tmp_path / "missing", "gpt2"]) == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()
    (tmp_path / "empty").mkdir()
    prepare_output(tmp_path / "empty")


def test_resuming_may_write_into_its_own_output_but_never_into_the_source(tmp_path):
    output = _compfair_output(tmp_path / "run")
    prepare_output(output, sources=["gpt2"], resuming=True)
    with pytest.raises(OutputFolderError):
        prepare_output(output, sources=[output], resuming=True)


# --- building beside the output and swapping it in -------------------------------------------------

def test_a_failed_build_leaves_the_previous_output_untouched_and_no_temporary_folder(tmp_path):
    output = _compfair_output(tmp_path / "out")
    before = _digest(output)
    with pytest.raises(RuntimeError, match="check failed"), staged_output(output, overwrite=True) as staged:
        (staged / "model.safetensors").write_bytes(b"new")
        raise RuntimeError("check failed")
    assert _digest(output) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_symlinked_output_replaces_the_folder_it_points_to_and_keeps_the_link(tmp_path):
    real = _compfair_output(tmp_path / "real")
    link = tmp_path / "link"
    link.symlink_to(real)
    with staged_output(link, overwrite=True) as staged:
        (staged / "config.json").write_text('{"new": 1}')
    assert link.is_symlink() and (real / "config.json").read_text() == '{"new": 1}'


def test_a_user_file_added_while_the_output_was_built_is_never_replaced(tmp_path):
    output = tmp_path / "out"
    with pytest.raises(OutputFolderError, match="NOTES.md"), staged_output(output) as staged:
        (staged / "config.json").write_text("{}")
        output.mkdir()
        (output / "NOTES.md").write_text("mine")
    assert _digest(output) == {"NOTES.md": hashlib.sha256(b"mine").hexdigest()}


# --- every compressor CLI runs the check before it writes anything ---------------------------------

COMPRESSORS = {
    "prune": ["compress", "prune", "--num-examples", "8", "--block-size", "16", "--min-blocks", "1",
              "--iterations", "1", "--ratio", "0.25"],
    "quantize": ["compress", "quantize", "--latency-batch", "0"],
}


@pytest.mark.parametrize("command", sorted(COMPRESSORS))
@pytest.mark.parametrize("relation", ["same", "inside", "holds_model", "file", "user_files"])
def test_compressor_refuses_an_unsafe_output_and_leaves_the_source_intact(tiny_gpt2_dir, tmp_path, command,
                                                                          relation, capsys):
    source = Path(shutil.copytree(tiny_gpt2_dir, tmp_path / "src"))
    other = _model_folder(tmp_path / "other")
    (tmp_path / "file").write_text("keep")
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "tokenizer.json").write_text("{}")
    output = {"same": source, "inside": source / "out", "holds_model": other, "file": tmp_path / "file",
              "user_files": tmp_path / "user"}[relation]
    before = _digest(tmp_path)
    code = cli.main([*COMPRESSORS[command], "--model", str(source), "--output", str(output), "--overwrite"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(output) in err[0], err
    assert _digest(tmp_path) == before


@pytest.mark.parametrize("command", sorted(COMPRESSORS))
def test_compressor_overwrite_replaces_an_earlier_compfair_result(tiny_gpt2_dir, tmp_path, command):
    output = _compfair_output(tmp_path / "out")
    args = [*COMPRESSORS[command], "--model", str(tiny_gpt2_dir), "--output", str(output)]
    assert cli.main(args) == 2
    assert cli.main([*args, "--overwrite"]) == 0
    weights = output / "model.safetensors"  # compfair's int8 writes compfair_quantized.safetensors instead
    assert weights.read_bytes() != b"old weights" if command == "prune" else not weights.exists()
    assert json.loads((output / "compfair_compression.json").read_text())["method"]
    marker = json.loads((output / MARKER).read_text())
    assert marker["complete"] and set(marker["files"]) == {p.relative_to(output).as_posix()
                                                           for p in output.rglob("*") if p.is_file()} - {MARKER}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left


@pytest.mark.parametrize("failing", ["checks.check_compressed", "metadata.write_compression_metadata"])
def test_quantize_overwrite_whose_new_run_fails_keeps_the_previous_model(tiny_gpt2_dir, tmp_path, monkeypatch,
                                                                        failing):
    """Issue 20: `quantize --output prev_model --overwrite` whose new run failed its check deleted the old model."""
    from compressors.checks import CompressionCheckError

    output = _compfair_output(tmp_path / "prev_model")
    before = _digest(output)

    def fail(*args, **kwargs):
        raise CompressionCheckError("int8 vs float: logits differ (test)")

    monkeypatch.setattr(f"compressors.{failing}", fail)  # before the save, or after it (the record is last)
    code = cli.main([*COMPRESSORS["quantize"], "--model", str(tiny_gpt2_dir), "--output", str(output),
                     "--overwrite"])
    assert code == 2
    assert _digest(output) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prev_model"]


KILL_DURING_SAVE = """
import os, signal, sys
import compressors.metadata as metadata
def killed(*args, **kwargs):  # the weights and config are saved; the record is next
    os.kill(os.getpid(), signal.SIGKILL)
metadata.write_compression_metadata = killed
from compfair_tasks import cli
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.slow  # a subprocess importing torch and transformers: ~10 s idle, 30 s on a loaded machine
def test_a_sigkill_during_the_save_leaves_no_complete_looking_output_and_a_rerun_works(tiny_gpt2_dir, tmp_path):
    """Issue 20: a SIGKILL mid-save left weights + config without compfair_compression.json under --output."""
    output = tmp_path / "out"
    args = [*COMPRESSORS["quantize"], "--model", str(tiny_gpt2_dir), "--output", str(output)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, *args], env=env, capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    assert not output.exists()
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".out.compfair-partial-")]
    assert len(leftovers) == 1 and (leftovers[0] / "config.json").is_file()  # the save had got that far
    assert cli.main(args) == 0
    assert (output / "compfair_compression.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the dead run's folder was cleaned up


def test_two_concurrent_runs_to_one_output_never_take_each_other_s_folder(tmp_path):
    with pytest.raises(OutputFolderError, match="received another compfair output"):
        with staged_output(tmp_path / "out") as first:
            (first / "config.json").write_text('{"run": 1}')
            with staged_output(tmp_path / "out") as second:  # starts later: its stale-folder cleanup spares `first`
                assert first.is_dir() and first != second
                (second / "config.json").write_text('{"run": 2}')
    assert (tmp_path / "out" / "config.json").read_text() == '{"run": 2}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_the_embedded_model_conversion_never_replaces_a_folder_it_did_not_write(tmp_path):
    from compfair_tasks import models

    target = tmp_path / "smollm2"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(models.ModelNotAvailableError, match="holds files compfair did not write"):
        models.embedded_model_dir("smollm2-135m", output_dir=target)
    assert _digest(target) == {"notes.txt": hashlib.sha256(b"mine").hexdigest()}
