"""The one place that finds a dataset: explicit path → COMPFAIR_DATA_DIR → shipped copy → hub.

Tasks call `resolve(name, explicit_path)` and read the files of the local folder it returns, or
`load_hub(source)` when only the hub has the data. An explicit path comes from the task's metadata
(`--metadata '{"stereoset_path": "/data/stereoset"}'`, or `TaskManager(metadata=...)`), keyed
`<dataset>_path`. Nothing here ever returns an empty dataset: missing data is a `DataNotFoundError`
that names the dataset, the environment variable and the expected file layout.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from compfair_tasks.errors import CompfairError
from compfair_tasks.hub import offline

log = logging.getLogger(__name__)

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


SEAT_TESTS = {  # Bias Bench's SEAT tests per bias type (sent-<name>.jsonl)
    "gender": ("weat6", "weat6b", "weat7", "weat7b", "weat8", "weat8b"),
    "race": ("angry_black_woman_stereotype", "angry_black_woman_stereotype_b", "weat3", "weat3b", "weat4", "weat5",
             "weat5b"),
    "religion": ("religion1", "religion1b", "religion2", "religion2b"),
}

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
        DatasetSpec("seat", "SEAT gender and race tests (sent-bias)",
                    tuple(f"sent-{t}.jsonl" for t in SEAT_TESTS["gender"] + SEAT_TESTS["race"]), None,
                    "CC BY-NC 4.0 (non-commercial)", True),
        # Bias Bench's religion tests: its repository has no license, so they are never shipped
        DatasetSpec("seat_religion", "SEAT religion tests (Bias Bench)",
                    tuple(f"sent-{t}.jsonl" for t in SEAT_TESTS["religion"]), None, "none given", False),
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
# the six labels of every TCCC comment (also the classes of Detoxify's "original" model, trained on TCCC)
TCCC_LABELS = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")


class DataNotFoundError(CompfairError, FileNotFoundError):
    """A dataset is neither on disk nor reachable on the hub."""


class DataFormatError(CompfairError, ValueError):
    """A dataset file that cannot be read (empty, truncated, not UTF-8, malformed, no rows)."""


class MetadataKeyError(CompfairError, KeyError):
    """A task metadata key that looks like a misspelt compfair key."""

    def __str__(self):  # KeyError would quote the message
        return str(self.args[0])


class MetadataValueError(CompfairError, ValueError):
    """A compfair task metadata key with a value of the wrong type or range (names the key and what it takes)."""


def whole_number(metadata: dict, key: str, minimum: int | None = None, default: int | None = None) -> int | None:
    """An int task setting (a JSON number or a string of digits, as --model_args passes it); anything else,
    or one below `minimum`, is a MetadataValueError naming the key."""
    value = metadata.get(key)
    if value is None or value == "":
        return default
    text = value.strip() if isinstance(value, str) else value
    number = None
    if isinstance(text, int) and not isinstance(text, bool):
        number = text
    elif isinstance(text, float) and text.is_integer():
        number = int(text)
    elif isinstance(text, str) and text.lstrip("-").isdigit():
        number = int(text)
    if number is None or (minimum is not None and number < minimum):
        at_least = f" of at least {minimum}" if minimum is not None else ""
        raise MetadataValueError(f"task metadata {key} must be a whole number{at_least}, not {value!r}")
    return number


def boolean(metadata: dict, key: str, default: bool) -> bool:
    """A yes/no task setting: a JSON boolean or true/false/yes/no/1/0/on/off; anything else names the key."""
    value = metadata.get(key, default)
    if isinstance(value, bool):
        return value
    words = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
    found = words.get(str(value).strip().lower())
    if found is None:
        raise MetadataValueError(f"task metadata {key} must be true or false, not {value!r}")
    return found


def text_value(metadata: dict, key: str, default: str | None = None) -> str | None:
    """A string task setting; a number, list or object is a MetadataValueError naming the key."""
    value = metadata.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise MetadataValueError(f"task metadata {key} must be a string, not {value!r}")
    return value


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
        if not folder.exists():
            raise DataNotFoundError(f"{s.title}: the path given as {s.name}_path ({explicit_path}) does not exist, "
                                    f"so it lacks {', '.join(s.files)}; give a folder that holds them")
        missing = _missing_files(folder, s.files)
        if missing:
            raise DataNotFoundError(
                f"{s.title}: the path given as {s.name}_path ({explicit_path}) lacks {', '.join(missing)}; "
                f"it must be a folder holding {', '.join(s.files)}."
            )
        return _record(DataSource(name, "path", str(folder)))
    env_root = os.environ.get(ENV_VAR)
    env_missing = None
    if env_root:
        folder = Path(env_root).expanduser() / s.name
        env_missing = _missing_files(folder, s.files)
        if not env_missing:
            return _record(DataSource(name, "env", str(folder)))
    found = None
    if s.shipped and not _missing_files(SHIPPED_DIR / s.name, s.files):
        found = DataSource(name, "shipped", str(SHIPPED_DIR / s.name))
    elif allow_hub and s.hub_id and not offline():
        found = DataSource(name, "hub", s.hub_id)
    if found is None:
        raise DataNotFoundError(_not_found_message(s))
    if env_missing:
        env_folder = Path(env_root).expanduser() / s.name
        lacks = ", ".join(env_missing) if env_folder.is_dir() else "(no such folder)"
        log.warning("%s is set, but %s lacks %s: %s uses the %s copy (%s) instead", ENV_VAR, env_folder, lacks,
                    s.title, found.kind, found.location)
    return _record(found)


# --- provenance: which copy every dataset came from, recorded in the task's results config -------

_recording: list[list[dict]] = []
_sha_cache: dict[tuple, str] = {}


def sha256(path: Path) -> str:
    key = (str(path), path.stat().st_size, path.stat().st_mtime_ns)
    if key not in _sha_cache:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        _sha_cache[key] = digest.hexdigest()
    return _sha_cache[key]


def provenance(source: DataSource) -> dict:
    """{dataset, source (path/env/shipped/hub), location, sha256 of each file the task reads (None for the hub)}."""
    record = {"dataset": source.name, "source": source.kind, "location": source.location, "sha256": None}
    if source.kind != "hub":
        folder = source.path
        files = sorted({p for pattern in spec(source.name).files for p in folder.glob(pattern) if p.is_file()})
        record["sha256"] = {p.name: sha256(p) for p in files}
    return record


def _record(source: DataSource) -> DataSource:
    for sources in _recording:
        entry = provenance(source)
        if entry not in sources:
            sources.append(entry)
    return source


@contextlib.contextmanager
def recording():
    """Collect the provenance of every dataset resolved inside the block (the startup hook wraps task set-up)."""
    sources: list[dict] = []
    _recording.append(sources)
    try:
        yield sources
    finally:
        _recording.remove(sources)


# --- reading files: one-line errors that name the file, the line and the fix ------------------------


def read_text(path, what: str = "dataset file", allow_empty: bool = False) -> str:
    """A file's UTF-8 text; an empty (unless allowed), UTF-16 or otherwise non-UTF-8 file is a DataFormatError."""
    path = Path(path)
    raw = path.read_bytes()
    fix = "re-save it as UTF-8 (or re-copy the original)"
    if not raw.strip() and not allow_empty:
        raise DataFormatError(f"{path}: the {what} is empty; re-copy the original file")
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise DataFormatError(f"{path}: the {what} is UTF-16, not UTF-8; {fix}")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataFormatError(f"{path}:{line}: the {what} is not UTF-8 (byte 0x{raw[error.start]:02x}; latin-1 or "
                              f"another encoding?); {fix}") from None


def read_json(path, what: str = "dataset file", unique_keys: bool = False):
    """Parsed JSON; `unique_keys`: an object with a key twice (json keeps the last one silently) is an error."""
    text = read_text(path, what)

    def no_repeated_keys(pairs):
        counts = {}
        for key, _ in pairs:
            counts[key] = counts.get(key, 0) + 1
            if counts[key] > 1:
                needle = json.dumps(key)
                raise DataFormatError(f"{path}:{line_of(text, needle, 1) or '?'}: the {what} has the key {key!r} "
                                      "twice in one object (JSON keeps only the last); merge or remove the "
                                      "duplicate, or re-copy the original file")
        return dict(pairs)

    try:
        return json.loads(text, object_pairs_hook=no_repeated_keys if unique_keys else None)
    except json.JSONDecodeError as error:
        raise DataFormatError(f"{path}:{error.lineno}:{error.colno}: the {what} is not valid JSON ({error.msg}; "
                              "truncated?); re-copy the original file") from None


def refuse_duplicates(keyed: Iterable[tuple[object, str]], what: str) -> None:
    """Stop at the first key seen twice: a duplicated row would be scored, and weigh, twice. `keyed` gives
    (key, where: file:line or another place) per row; empty keys are not checked."""
    first_seen: dict = {}
    for key, where in keyed:
        if key in (None, ""):
            continue
        if key in first_seen:
            raise DataFormatError(f"{where}: {what} {key!r} appears twice (first at {first_seen[key]}); each copy "
                                  "would be scored: remove the duplicated row, or re-copy the original file")
        first_seen[key] = where


def line_of(text: str, needle: str, occurrence: int = 0) -> int | None:
    """The 1-based line of the `occurrence`-th (0-based) appearance of `needle` in `text`, or None."""
    start = -1
    for _ in range(occurrence + 1):
        start = text.find(needle, start + 1)
        if start < 0:
            return None
    return text.count("\n", 0, start) + 1


def to_dataset(docs: list[dict], where: str):
    """{'test': Dataset} of the docs; no docs is a DataFormatError naming where they were read from."""
    if not docs:
        raise DataFormatError(f"{where}: no rows to evaluate; check the file (or the split/filter options)")
    import datasets

    return {"test": datasets.Dataset.from_list(docs)}


# --- task metadata keys ----------------------------------------------------------------------------

# every key a compfair task reads from its metadata (--metadata, --model_args, YAML metadata)
TASK_KEYS = {
    "preference_score", "tokenizer", "prefix_token_id", "scorer", "scorer_batch_size", "scorer_batch_tokens",
    "scorer_device", "scorer_progress", "scorer_label", "dialogue", "tccc_split", "tccc_size", "tccc_seed",
    "fluency_model", "fluency_device", "fluency_batch_size", "fluency_batch_tokens", "data_sources",
    "bold_per_group", "bold_seed", "seat_pooling", "seat_permutations", "seat_seed",
}
_PATH_SUFFIXES = ("_path", "_pth", "_paths", "_dir", "_folder", "_file")


def known_metadata_keys() -> set[str]:
    return TASK_KEYS | {f"{name}_path" for name in DATASETS}


def check_metadata(metadata: dict | None) -> None:
    """Reject metadata keys that look like misspelt compfair keys (close to a known one, or an unknown *_path)."""
    known = known_metadata_keys()
    for key in metadata or {}:
        if not isinstance(key, str) or key in known:
            continue
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.85)
        stem = next((key[: -len(sfx)] for sfx in _PATH_SUFFIXES if key.endswith(sfx)), None)
        if not close and stem is not None:
            close = difflib.get_close_matches(stem, sorted(DATASETS), n=1, cutoff=0.6)
            close = [f"{close[0]}_path"] if close else []
            if not close and stem not in DATASETS:
                continue  # e.g. a model argument such as peft_path: not compfair's
        if close:
            raise MetadataKeyError(f"unknown task metadata key {key!r}: did you mean {close[0]!r}? "
                                   f"(compfair dataset paths are <dataset>_path, datasets: {', '.join(DATASETS)})")


def _not_found_message(s: DatasetSpec) -> str:
    where = f"set {ENV_VAR} to a folder holding {layout(s.name)}, or pass --metadata '{{\"{s.name}_path\": \"<folder>\"}}'"
    if s.hub_id:
        hub = f"; online, compfair would download {s.hub_id} from the Hugging Face hub"
        if offline():
            hub += f" ({offline()} is set)"
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


def read_bold(file) -> list[tuple[str, str, list[str]]]:
    """(group, name, texts) of one BOLD JSON file (group -> name -> [texts]; Wikipedia sentences or prompts),
    in file order."""
    tree = read_json(file, "BOLD file", unique_keys=True)
    if not isinstance(tree, dict) or not all(isinstance(names, dict) and all(
            isinstance(texts, list) and all(isinstance(text, str) for text in texts) for texts in names.values())
            for names in tree.values()):
        raise DataFormatError(f"{file}: not a BOLD file (group -> name -> [texts]); re-copy the original")
    return [(group, name, texts) for group, names in tree.items() for name, texts in names.items()]


def path_from_metadata(name: str, metadata: dict | None) -> str | None:
    """The explicit path for `name` in task metadata (`<name>_path`), if any; misspelt keys are refused."""
    check_metadata(metadata)
    return text_value(metadata or {}, f"{name}_path")


def metadata_json(text: str) -> str:
    """argparse type of a --metadata option: a JSON object whose compfair-looking keys are spelt right."""
    import argparse

    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error.msg} at column {error.colno}): {text!r}; quote "
                                         """it for the shell, e.g. --metadata '{"scorer": "profanity-check"}'""") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object {{...}}, got {text!r}")
    try:
        check_metadata(value)
    except MetadataKeyError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text
