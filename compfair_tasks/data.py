"""The one place that finds a dataset: explicit path → COMPFAIR_DATA_DIR → shipped copy → hub.

Tasks call `resolve(name, explicit_path)` and read the files of the local folder it returns, or
`load_hub(source)` when only the hub has the data. An explicit path comes from the task's metadata
(`--metadata '{"stereoset_path": "/data/stereoset"}'`, or `TaskManager(metadata=...)`), keyed
`<dataset>_path`. Nothing here ever returns an empty dataset: missing data is a `DataNotFoundError`
that names the dataset, the environment variable and the expected file layout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "COMPFAIR_DATA_DIR"
SHIPPED_DIR = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class DatasetSpec:
    name: str  # also the folder name under COMPFAIR_DATA_DIR and the shipped data dir
    title: str
    files: tuple[str, ...]  # files (glob patterns allowed) a local folder must hold
    hub_id: str | None
    license: str
    shipped: bool


def _winobias_files():
    return tuple(
        f"{kind}_stereotyped_type{t}.txt.{split}"
        for kind in ("pro", "anti")
        for t in (1, 2)
        for split in ("dev", "test")
    )


BOLD_DOMAINS = ("gender", "race", "religious_ideology", "political_ideology", "profession")


def _bold_prompt_files():
    return tuple(f"{domain}_prompt.json" for domain in BOLD_DOMAINS)


DATASETS = {
    spec.name: spec
    for spec in (
        DatasetSpec("stereoset", "StereoSet (dev)", ("dev.json",), "McGill-NLP/stereoset", "CC BY-SA 4.0", True),
        DatasetSpec("winobias", "WinoBias", _winobias_files(), "uclanlp/wino_bias", "MIT", True),
        DatasetSpec(
            "crows_pairs", "CrowS-Pairs", ("crows_pairs_anonymized.csv",), "nyu-mll/crows_pairs", "CC BY-SA 4.0", True
        ),
        DatasetSpec("bold_wiki", "BOLD Wikipedia sentences", ("*_wiki.json",), None, "CC BY-SA 4.0", True),
        DatasetSpec("bold", "BOLD prompts", _bold_prompt_files(), None, "CC BY-SA 4.0", True),
        DatasetSpec(
            "rtp_challenging",
            "RealToxicityPrompts, most successful challenging prompts per attribute",
            ("rtp_*.txt",),
            None,
            "Apache-2.0",
            True,
        ),
        DatasetSpec(
            "rtp", "RealToxicityPrompts", ("prompts.jsonl",), "allenai/real-toxicity-prompts", "Apache-2.0", False
        ),
        DatasetSpec(
            "tccc",
            "Jigsaw Toxic Comment Classification Challenge",
            ("train.csv",),
            "thesofakillers/jigsaw-toxic-comment-classification-challenge",
            "Kaggle competition terms (not redistributable)",
            False,
        ),
    )
}


class DataNotFoundError(FileNotFoundError):
    """A dataset is neither on disk nor reachable on the hub."""


@dataclass(frozen=True)
class DataSource:
    """Where a dataset was found: kind is 'path', 'env', 'shipped' or 'hub'."""

    name: str
    kind: str
    location: str  # a folder, or the hub id when kind == 'hub'

    @property
    def path(self) -> Path:
        if self.kind == "hub":
            raise ValueError(f"{self.name} comes from the hub ({self.location}); use load_hub()")
        return Path(self.location)

    def __str__(self):
        return f"{self.kind}:{self.location}"


def spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}") from None


def _missing_files(folder: Path, files: tuple[str, ...]) -> list[str]:
    return [pattern for pattern in files if not any(folder.glob(pattern))]


def layout(name: str) -> str:
    s = spec(name)
    return f"{s.name}/" + ", ".join(s.files)


def resolve(name: str, explicit_path: str | os.PathLike | None = None, allow_hub: bool = True) -> DataSource:
    """Find dataset `name`. An explicit path that lacks the files is an error, never skipped."""
    s = spec(name)
    if explicit_path:
        folder = Path(explicit_path).expanduser()
        if folder.is_file():
            folder = folder.parent
        missing = _missing_files(folder, s.files)
        if missing:
            raise DataNotFoundError(
                f"{s.title}: the path given as {s.name}_path ({explicit_path}) lacks {', '.join(missing)}; "
                f"it must be a folder holding {', '.join(s.files)}."
            )
        return DataSource(name, "path", str(folder))
    env_root = os.environ.get(ENV_VAR)
    if env_root:
        folder = Path(env_root).expanduser() / s.name
        if not _missing_files(folder, s.files):
            return DataSource(name, "env", str(folder))
    if s.shipped and not _missing_files(SHIPPED_DIR / s.name, s.files):
        return DataSource(name, "shipped", str(SHIPPED_DIR / s.name))
    if allow_hub and s.hub_id and not _hub_offline():
        return DataSource(name, "hub", s.hub_id)
    raise DataNotFoundError(_not_found_message(s))


def _hub_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _not_found_message(s: DatasetSpec) -> str:
    where = f"set {ENV_VAR} to a folder holding {layout(s.name)}, or pass --metadata '{{\"{s.name}_path\": \"<folder>\"}}'"
    if s.hub_id:
        hub = f"; online, compfair would download {s.hub_id} from the Hugging Face hub"
        if _hub_offline():
            hub += " (HF_HUB_OFFLINE is set)"
    else:
        hub = ""
    return f"{s.title} data not found: {where}{hub}."


def load_hub(source: DataSource, **kwargs):
    """Load a hub dataset, turning network failures into a DataNotFoundError with the local fix."""
    import datasets

    try:
        return datasets.load_dataset(source.location, **kwargs)
    except Exception as error:  # offline, gated or renamed: say how to use a local copy instead
        raise DataNotFoundError(f"{_not_found_message(spec(source.name))} (hub error: {error})") from error


def path_from_metadata(name: str, metadata: dict | None) -> str | None:
    """The explicit path for `name` in task metadata (`<name>_path`), if any."""
    return (metadata or {}).get(f"{name}_path")
