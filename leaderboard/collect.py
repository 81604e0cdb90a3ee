"""lm_eval output folders → one tidy DataFrame, one row per evaluated model.

lm_eval `--output_path OUT` writes `OUT/<model_name_sanitized>/results_<timestamp>.json` (and
`samples_<task>_<timestamp>.jsonl` with `--log_samples`). Every results file found under the given
folders is read; files of the same model (same `model_args`) are merged, the newest file winning per
task, so a model evaluated in several runs becomes one row. Metric columns are named `task:metric`
(`compfair_stereoset:ss`, `wikitext:word_perplexity`), with `task:metric_stderr` beside them.
Checkpoint metadata comes from `compfair_compression.json` beside the checkpoint named by
`pretrained=` and a measured latency from `compfair_latency.json` (see `compfair_tasks.measure`).
A file that cannot be read is reported by name in `Collection.problems` and skipped.
"""

from __future__ import annotations

import json
import math
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from compfair_tasks.errors import CompfairError
from compfair_tasks.measure import LATENCY_FILE, checkpoint_size_bytes
from compressors.metadata import FILE_NAME as COMPRESSION_FILE

RESULTS_GLOB = "results_*.json"
INFO_COLUMNS = ["model", "model_type", "method", "recipe", "teacher", "teacher_evaluated", "params", "size_bytes",
                "bits", "sparsity", "weights_equal_source", "latency_ms", "scorer", "limit", "eval_batch",
                "pretrained"]
# files of a checkpoint folder: a relative path is taken for one only where the folder holds one of them
CHECKPOINT_MARKERS = ("config.json", COMPRESSION_FILE, "compfair_quantized.safetensors")
UNKNOWN_METHOD = "unknown: checkpoint not found"


class NoResultsError(CompfairError, FileNotFoundError):
    """No lm_eval results file could be read under the folders given."""


@dataclass
class Run:
    """One evaluated model: its merged task results and where its files are."""

    model_args: dict
    results: dict = field(default_factory=dict)  # task -> {metric key: value} as lm_eval wrote it
    configs: dict = field(default_factory=dict)  # task -> task config
    samples: dict = field(default_factory=dict)  # task -> samples_*.jsonl path
    results_files: list = field(default_factory=list)
    num_parameters: int | None = None
    limit: float | None = None  # lm_eval --limit of any of its runs: numbers from a subset of each task
    compression: dict | None = None
    latency: dict | None = None
    name: str = ""
    model_type: str = ""  # lm_eval --model (hf, compfair-mlm, compfair-quantized, ...)
    checkpoint: Path | None = None  # the checkpoint folder `pretrained` names, found by `local_folder`
    looked_up: int = -1  # how many results files the lookup of `checkpoint` saw (-1: not looked up yet)
    eval_batch: str = ""  # lm_eval --batch_size: part of a batch-dependent (dynamic int8) model's identity

    @property
    def pretrained(self) -> str:
        return str(self.model_args.get("pretrained") or self.model_args.get("model") or "")

    @property
    def checkpoint_dir(self) -> Path | None:
        if self.checkpoint is None and self.looked_up != len(self.results_files):
            self.looked_up = len(self.results_files)
            self.checkpoint = local_folder(self.pretrained, [p.parent for p in self.results_files])
        return self.checkpoint


@dataclass
class Collection:
    frame: pd.DataFrame
    runs: list[Run]
    problems: list[str]

    def run(self, model: str) -> Run:
        for run in self.runs:
            if model in (run.name, run.pretrained):
                return run
        raise KeyError(f"no model named {model!r}; models: {', '.join(r.name for r in self.runs)}")


def local_folder(name: str, anchors=()) -> Path | None:
    """The folder a recorded model path names, or None (a hub id, or a folder that is not here).

    lm_eval records `pretrained=` as typed, and a relative path is relative to the folder lm_eval ran in, which
    it does not record. That folder is usually an ancestor of its --output_path, so a relative path is looked up
    under each anchor (the results files' folders) and its parents, nearest first, then under the current
    folder; only a folder holding a checkpoint file (CHECKPOINT_MARKERS) counts there, so that lm_eval's own
    results folder (`out/gpt2` for the hub id gpt2) is never taken for a checkpoint.
    """
    if not name:
        return None
    path = Path(name).expanduser()
    if path.is_absolute():
        return path if path.is_dir() else None
    seen = []
    for anchor in anchors:
        anchor = Path(anchor).absolute()
        for folder in (anchor, *anchor.parents):
            if folder not in seen:
                seen.append(folder)
    seen.append(Path.cwd())
    for folder in seen:
        candidate = folder / path
        if any((candidate / marker).is_file() for marker in CHECKPOINT_MARKERS):
            return candidate
    return path.absolute() if path.is_dir() else None


def looks_like_path(name: str) -> bool:
    """A model name that can only be a folder, never a hub id (`owner/name` or `name`)."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def parse_model_args(model_args) -> dict:
    """lm_eval records model_args as a dict (0.4.9+) or as the CLI string `k=v,k=v`."""
    if isinstance(model_args, dict):
        return dict(model_args)
    parsed = {}
    for part in str(model_args or "").split(","):
        if "=" in part:
            key, value = part.split("=", 1)
            parsed[key.strip()] = value.strip()
    return parsed


def _number(value) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def task_metrics(task_results: dict) -> dict[str, float]:
    """`{"ss,none": 61.2, "ss_stderr,none": 1.1, "alias": ...}` → `{"ss": 61.2, "ss_stderr": 1.1}`.

    The filter part of the key is dropped; a metric reported under several filters keeps them
    apart as `metric[filter]`. Non-numeric entries (alias, "N/A" stderr) are left out.
    """
    by_metric: dict[str, dict[str, float]] = {}
    for key, value in task_results.items():
        if "," not in key:
            continue
        metric, filter_name = key.split(",", 1)
        number = _number(value)
        if not math.isnan(number):
            by_metric.setdefault(metric, {})[filter_name] = number
    flat = {}
    for metric, per_filter in by_metric.items():
        if len(per_filter) == 1:
            flat[metric] = next(iter(per_filter.values()))
        else:
            flat.update({f"{metric}[{f}]": v for f, v in per_filter.items()})
    return flat


def _timestamp(path: Path) -> str:
    match = re.search(r"results_(.+)\.json$", path.name)
    return match.group(1) if match else ""


def _samples_files(results_file: Path) -> dict[str, Path]:
    stamp = _timestamp(results_file)
    found = {}
    for sample_file in results_file.parent.glob(f"samples_*_{stamp}.jsonl"):
        task = sample_file.name[len("samples_"): -len(f"_{stamp}.jsonl")]
        found[task] = sample_file
    return found


def _read_json(path: Path, problems: list[str]) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        problems.append(f"{path}: not readable JSON ({error})")
        return None
    if not isinstance(data, dict):
        problems.append(f"{path}: expected a JSON object, found {type(data).__name__}")
        return None
    return data


def _model_key(model_args: dict) -> str:
    return json.dumps(model_args, sort_keys=True, default=str)


def _find_results_files(folders, problems: list[str]) -> list[Path]:
    files = []
    for folder in map(Path, folders):
        if folder.is_file() and folder.suffix == ".json":
            files.append(folder)
        elif folder.is_dir():
            found = sorted(folder.rglob(RESULTS_GLOB))
            if not found:
                problems.append(f"{folder}: no {RESULTS_GLOB} found (is this an lm_eval --output_path folder?)")
            files += found
        elif folder.is_file():
            problems.append(f"{folder}: not a results_*.json file nor a folder; skipped")
        else:
            problems.append(f"{folder}: no such file or folder")
    return files


def read_runs(folders, problems: list[str] | None = None) -> list[Run]:
    """Every model found under `folders`, results of the same model merged (newest file wins per task)."""
    problems = [] if problems is None else problems
    runs: dict[str, Run] = {}
    for path in sorted(_find_results_files(folders, problems), key=_timestamp):
        data = _read_json(path, problems)
        if data is None:
            continue
        results = data.get("results")
        if not isinstance(results, dict) or not results:
            problems.append(f"{path}: no 'results' section (partial or not an lm_eval results file); skipped")
            continue
        config = data.get("config") if isinstance(data.get("config"), dict) else {}
        configs = data.get("configs") if isinstance(data.get("configs"), dict) else {}
        if data.get("configs") is not None and not isinstance(data.get("configs"), dict):
            problems.append(f"{path}: 'configs' is a {type(data['configs']).__name__}, not an object; task settings "
                            "(scorer, data sources) not read")
        model_args = parse_model_args(config.get("model_args"))
        if not model_args:
            model_args = {"pretrained": data.get("model_name") or path.parent.name}
        # dynamic int8 scores depend on the evaluation batch: its runs at other batch sizes are other rows
        batch = str(config.get("batch_size", "")) if config.get("model") == "compfair-quantized" else ""
        run = runs.setdefault(_model_key(model_args) + batch, Run(model_args=model_args, eval_batch=batch))
        run.results_files.append(path)
        samples = _samples_files(path)
        for task, task_results in results.items():
            if not isinstance(task_results, dict):
                problems.append(f"{path}: results[{task!r}] is not an object; skipped")
                continue
            run.results[task] = task_results
            run.configs[task] = configs.get(task) if isinstance(configs.get(task), dict) else {}
            if task in samples:
                run.samples[task] = samples[task]
            else:
                run.samples.pop(task, None)
        run.num_parameters = config.get("model_num_parameters") or run.num_parameters
        run.limit = config.get("limit") or run.limit
        run.model_type = str(config.get("model") or run.model_type)
    for run in runs.values():
        if run.checkpoint_dir is None and looks_like_path(run.pretrained):
            problems.append(f"{run.pretrained} (pretrained= of {run.results_files[-1]}): checkpoint folder not found "
                            "under the results' folders or the current folder, so its compression is unknown; "
                            "run the leaderboard where lm_eval ran, or evaluate with an absolute path")
        _attach_checkpoint_files(run, problems)
    _name_runs(list(runs.values()))
    return list(runs.values())


def _attach_checkpoint_files(run: Run, problems: list[str]) -> None:
    folders = [run.checkpoint_dir] if run.checkpoint_dir else []
    folders += sorted({p.parent for p in run.results_files})
    for folder in folders:
        if run.compression is None and (folder / COMPRESSION_FILE).is_file():
            run.compression = _read_json(folder / COMPRESSION_FILE, problems)
        if run.latency is None and (folder / LATENCY_FILE).is_file():
            run.latency = _read_json(folder / LATENCY_FILE, problems)


def _name_runs(runs: list[Run]) -> None:
    """Short display names: the checkpoint folder name or hub id, widened by parent folders on clashes; an
    embedded model's converted folder shows the title `compfair model-dir` recorded (what the model really is)."""
    depth = {id(run): 1 for run in runs}
    titles = {}
    for run in runs:
        source = run.checkpoint_dir / "compfair_source.json" if run.checkpoint_dir else None
        if source is not None and source.is_file():
            title = (_read_json(source, []) or {}).get("title")
            if isinstance(title, str) and title:
                titles[run.checkpoint_dir] = title

    def name_of(run):
        parts = Path(run.pretrained.rstrip("/")).parts
        if not run.checkpoint_dir:  # a hub id keeps its owner: gpt2, microsoft/DialoGPT-small
            return run.pretrained or "model"
        if depth[id(run)] == 1 and run.checkpoint_dir in titles:  # an embedded model says what it is
            return titles[run.checkpoint_dir]
        return "/".join(parts[-depth[id(run)]:])

    for _ in range(8):
        names = [name_of(run) for run in runs]
        clashes = {n for n in names if names.count(n) > 1}
        if not clashes:
            break
        for run in runs:
            if name_of(run) in clashes:
                depth[id(run)] += 1
    seen: dict[str, int] = {}
    for run in runs:  # identical paths with different model_args (e.g. dtype): number them
        base = name_of(run)
        seen[base] = seen.get(base, 0) + 1
        run.name = base if seen[base] == 1 else f"{base} #{seen[base]}"


def _checkpoint_size(run: Run) -> float:
    """Measured on disk when the checkpoint is here (older records counted checkpoints/ too), else recorded."""
    size = checkpoint_size_bytes(run.checkpoint_dir) if run.checkpoint_dir is not None else 0
    if not size and run.compression and run.compression.get("size_bytes"):
        return _number(run.compression["size_bytes"])
    return float(size) if size else math.nan


def _recipe(compression: dict | None) -> str:
    """The settings of a compression as `key=value` pairs (the method's own names)."""
    if not compression:
        return ""
    settings = compression.get("settings")
    if isinstance(settings, dict):
        items = settings.items()
    else:
        skip = {"method", "source_model", "teacher", "params", "size_bytes", "removed", "seed", "importance",
                "losses", "final_losses", "latency_ms"}
        items = ((k, v) for k, v in compression.items() if k not in skip and not isinstance(v, (dict, list)))
    return ", ".join(f"{k}={v}" for k, v in items if not isinstance(v, (dict, list)))


def _scorer(run: Run) -> str:
    """The toxicity scorer recorded in the results (task metadata or a results field)."""
    names = set()
    for task, config in run.configs.items():
        metadata = config.get("metadata") if isinstance(config, dict) else None
        for source in (metadata or {}, run.results.get(task, {})):
            value = source.get("scorer") if isinstance(source, dict) else None
            if isinstance(value, str) and value:
                names.add(value)
    return ", ".join(sorted(names))


def _source_model(compression: dict | None) -> str:
    if not compression:
        return ""
    return str(compression.get("source_model") or compression.get("teacher") or "")


def source_folder(run: Run) -> Path | None:
    """The local folder of the model `run` was compressed from (a relative `source_model` is relative to where
    the compressor ran: looked up from the student's checkpoint folder upward, as `local_folder` does)."""
    anchors = [run.checkpoint_dir] if run.checkpoint_dir else []
    return local_folder(_source_model(run.compression), anchors + [p.parent for p in run.results_files])


def _short_source(run: Run) -> str:
    """A local teacher folder by its name (a hub id stays whole)."""
    source = _source_model(run.compression)
    return Path(source).name if source and source_folder(run) else source


def teacher_of(run: Run, runs: list[Run]) -> Run | None:
    """The run evaluated on the checkpoint this run was compressed from (`source_model`), if any."""
    source = _source_model(run.compression)
    if not source:
        return None
    folder = source_folder(run)
    others = [other for other in runs if other is not run]
    if folder is not None:  # the same folder, however its path was written
        for other in others:
            if other.checkpoint_dir and other.checkpoint_dir.resolve() == folder.resolve():
                return other
    for other in others:  # a hub id, or an embedded model's name
        if source in (other.pretrained, other.name):
            return other
    return None


def missing_teachers(runs: list[Run]) -> list[str]:
    """One line per compressed model whose teacher is not among the results (nothing to test it against)."""
    return [f"{run.name}: its teacher {_source_model(run.compression)} (source_model in compfair_compression.json) "
            "is not among the results, so it has no paired test and no degeneration flag; evaluate the teacher "
            "and pass its results folder too" for run in runs
            if _source_model(run.compression) and teacher_of(run, runs) is None]


def measured_weights(run: Run, problems: list[str] | None = None) -> dict:
    """bits / sparsity / equal-to-source of a compressed checkpoint, measured from its saved weight files
    (compressors.verify): as the compressor measured them on save, else measured now."""
    from safetensors import SafetensorError

    from compressors.verify import measure_weights

    unknown = {"bits": math.nan, "sparsity": math.nan, "weights_equal_source": ""}
    if not run.compression or run.checkpoint_dir is None:
        return unknown
    measured = run.compression.get("measured")
    if not isinstance(measured, dict):
        try:  # weights_only / safetensors: nothing in a crafted file runs
            measured = measure_weights(run.checkpoint_dir, source_folder(run))
        except (OSError, ValueError, RuntimeError, SafetensorError, pickle.UnpicklingError, EOFError) as error:
            if problems is not None:  # unreadable weights: blank cells and a line on the page, never a crash
                first = (str(error).splitlines() or [""])[0][:200]
                problems.append(f"{run.checkpoint_dir}: bits and sparsity not measured, its weight files are not "
                                f"readable as plain tensors ({type(error).__name__}: {first})")
            return unknown
    equal = measured.get("equal_to_source")
    return {"bits": _number(measured.get("bits")), "sparsity": _number(measured.get("sparsity")),
            "weights_equal_source": "" if equal is None else ("YES: not compressed" if equal else "no")}


def to_frame(runs: list[Run], problems: list[str] | None = None) -> pd.DataFrame:
    rows = []
    for run in runs:
        teacher = teacher_of(run, runs)
        compression = run.compression or {}
        params = compression.get("params") or run.num_parameters
        latency = (run.latency or {}).get("latency_ms", compression.get("latency_ms"))
        uncompressed = "none" if run.checkpoint_dir or not looks_like_path(run.pretrained) else UNKNOWN_METHOD
        row = {
            "model": run.name,
            "model_type": run.model_type,
            "method": compression.get("method", "") or ("" if compression else uncompressed),
            "recipe": _recipe(run.compression),
            "teacher": teacher.name if teacher else _short_source(run),
            "teacher_evaluated": ("" if not _source_model(run.compression) else "yes" if teacher else
                                  "NO: not among the results (no paired test, no degeneration flag)"),
            "params": _number(params) if params is not None else math.nan,
            "size_bytes": _checkpoint_size(run),
            **measured_weights(run, problems),
            "latency_ms": _number(latency) if latency is not None else math.nan,
            "scorer": _scorer(run),
            "limit": _number(run.limit) if run.limit else math.nan,
            "eval_batch": run.eval_batch if (compression.get("settings") or {}).get("batch_dependent") else "",
            "pretrained": run.pretrained,
        }
        for task, task_results in run.results.items():
            for metric, value in task_metrics(task_results).items():
                row[f"{task}:{metric}"] = value
        rows.append(row)
    frame = pd.DataFrame(rows, columns=None if rows else INFO_COLUMNS)
    metric_columns = sorted(c for c in frame.columns if c not in INFO_COLUMNS)
    return frame[INFO_COLUMNS + metric_columns].reset_index(drop=True)


def collect(folders) -> Collection:
    """Read every lm_eval results file under `folders` into a Collection (frame, runs, problems)."""
    problems: list[str] = []
    runs = read_runs(folders, problems)
    problems += missing_teachers(runs)
    return Collection(frame=to_frame(runs, problems), runs=runs, problems=problems)
