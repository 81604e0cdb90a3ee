import pytest

from compfair_tasks import data


def test_shipped_copies_resolve_with_their_license_files():
    for name, spec in data.DATASETS.items():
        if not spec.shipped:
            continue
        source = data.resolve(name)
        assert source.kind == "shipped"
        assert any(source.path.glob("LICENSE*")), f"{name} is shipped without its license"


def test_explicit_path_wins_and_must_hold_the_files(tmp_path):
    (tmp_path / "dev.json").write_text("{}")
    assert data.resolve("stereoset", tmp_path) == data.DataSource("stereoset", "path", str(tmp_path))
    with pytest.raises(data.DataNotFoundError, match="lacks dev.json"):
        data.resolve("stereoset", tmp_path / "elsewhere")


def test_env_dir_comes_before_the_shipped_copy(tmp_path, monkeypatch):
    (tmp_path / "crows_pairs").mkdir()
    (tmp_path / "crows_pairs" / "crows_pairs_anonymized.csv").write_text("x")
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path))
    assert data.resolve("crows_pairs").kind == "env"
    # a dataset the env dir lacks falls through to the shipped copy
    assert data.resolve("winobias").kind == "shipped"


def test_missing_offline_names_dataset_env_var_and_layout(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    with pytest.raises(data.DataNotFoundError) as error:
        data.resolve("tccc")
    message = str(error.value)
    assert "Jigsaw" in message and data.ENV_VAR in message and "tccc/train.csv" in message
    assert "HF_HUB_OFFLINE" in message


def test_hub_is_the_last_resort_when_online(monkeypatch):
    from compfair_tasks.hub import OFFLINE_VARIABLES

    for var in OFFLINE_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    source = data.resolve("rtp")
    assert (source.kind, source.location) == ("hub", "allenai/real-toxicity-prompts")
    with pytest.raises(ValueError, match="load_hub"):
        source.path


def test_metadata_key_is_per_dataset():
    assert data.path_from_metadata("stereoset", {"stereoset_path": "/x", "winobias_path": "/y"}) == "/x"
    assert data.path_from_metadata("stereoset", None) is None
