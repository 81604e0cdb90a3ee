"""A study spec (YAML) read into plain values, every value remembering its spec line, then checked.

`load_spec(path)` refuses, before any cell runs, an unknown key, a value of the wrong kind, and (in
`series.expand`) a revision that does not exist or a model that cannot be loaded: one line each, naming the
spec line and the fix (`SpecError`, a CompfairError: exit 2 at the command line).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from compfair_tasks.errors import CompfairError

TOP_KEYS = {
    "name": "study name (folder default compfair-study-<name>)",
    "tasks": "lm_eval task names",
    "limit": "examples per task (null = all)",
    "seed": "lm_eval --seed",
    "batch_size": "lm_eval --batch_size (fixed: dynamic int8 depends on the batch)",
    "metadata": "task metadata (lm_eval --metadata)",
    "gen_kwargs": "lm_eval --gen_kwargs",
    "model_args": "extra lm_eval --model_args for every model, e.g. dtype=float32",
    "device": "torch device",
    "series": "the series of models",
    "compressions": "compressions applied to every series member",
    "control": "quality-matched control (study report)",
    "executor": "local (default) or slurm and its resources",
}
SERIES_KEYS = ("name", "model", "revisions", "checkpoints", "steps", "models", "tokenizer", "backend", "model_args",
               "compressions", "tasks", "metadata", "gen_kwargs")  # the last four replace (metadata: extends) the top's
MEMBER_KEYS = ("pretrained", "revision", "size", "order", "label", "tokenizer")
COMPRESSION_KEYS = ("method", "level", "levels", "bits", "options", "label")
METHODS = ("none", "dynamic-int8", "int8-per-token", "gptq", "rtn", "wanda", "magnitude", "sparsegpt",
           "prune-heads", "distill", "noise")
CONTROL_KEYS = ("reference", "quality", "compare")


class SpecError(CompfairError):
    """A spec the runner refuses; the message names the spec line and the fix."""


@dataclass
class Located:
    """The spec's values with the line of each (by path: ("series", 0, "revisions", 2))."""

    file: Path
    lines: dict = field(default_factory=dict)

    def line(self, path: tuple) -> int:
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path, 1)

    def error(self, path: tuple, problem: str, fix: str) -> SpecError:
        where = ".".join(str(p) for p in path) or "spec"
        return SpecError(f"{self.file}:{self.line(path)}: {where}: {problem}; {fix}")


def _plain(node: yaml.Node, path: tuple, lines: dict):
    """A YAML node as Python values (yaml's own constructors for scalars), noting each value's line."""
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out = {}
        for key_node, value_node in node.value:
            key = yaml.SafeLoader(" ").construct_object(key_node)
            out[key] = _plain(value_node, (*path, key), lines)
            lines[(*path, key)] = key_node.start_mark.line + 1  # a key's line, not its value's (a block below it)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_plain(item, (*path, i), lines) for i, item in enumerate(node.value)]
    return yaml.SafeLoader(" ").construct_object(node)


def read_yaml(text: str, file: Path) -> tuple[dict, Located]:
    located = Located(Path(file))
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise SpecError(f"{file}:{line}: not valid YAML ({getattr(error, 'problem', error)}); fix the syntax") from None
    if node is None or not isinstance(node, yaml.MappingNode):
        raise SpecError(f"{file}:1: a study spec is a mapping (name:, tasks:, series:, compressions:); "
                        "see the README's Studies section")
    return _plain(node, (), located.lines), located


def check_keys(mapping: dict, allowed, path: tuple, located: Located) -> None:
    for key in mapping:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), list(allowed), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"allowed keys: {', '.join(allowed)}"
            raise located.error((*path, key), f"unknown key {key!r}", hint)


def expect(value, kinds, path: tuple, located: Located, what: str):
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise located.error(path, f"{value!r} is not {what}", f"write {what}")
    if not isinstance(value, kinds):
        raise located.error(path, f"{value!r} is not {what}", f"write {what}")
    return value


@dataclass
class Compression:
    method: str
    level: object  # None, a number (sparsity, kept fraction, noise scale, layers, bits) or text
    label: str
    options: dict  # extra `compfair compress` options, e.g. {"num-examples": 16}


@dataclass
class Spec:
    name: str
    tasks: list
    series: list  # the series mappings as written (series.expand turns them into members)
    compressions: list  # Compression
    limit: float | None = None
    seed: int = 1234
    batch_size: int | str = 8
    metadata: dict = field(default_factory=dict)
    gen_kwargs: str = ""
    model_args: str = ""
    device: str | None = None
    control: dict | None = None
    executor: dict = field(default_factory=lambda: {"kind": "local"})
    base_dir: Path = Path(".")  # relative paths in the spec are relative to the spec file
    located: Located | None = None
    text: str = ""


def _label(method: str, level) -> str:
    if method == "none":
        return "none"
    if method in ("dynamic-int8", "int8-per-token"):
        return method if level is None else f"{method}-{level:g}"
    if method in ("gptq", "rtn"):
        return f"{method}-{level}bit"
    return method if level is None else f"{method}-{level:g}" if isinstance(level, (int, float)) else f"{method}-{level}"


def parse_compressions(values, located: Located, where: tuple = ("compressions",)) -> list[Compression]:
    expect(values, list, where, located, "a list (e.g. [none, {method: dynamic-int8}])")
    out = []
    for i, item in enumerate(values):
        path = (*where, i)
        if isinstance(item, str):
            item = {"method": item}
        expect(item, dict, path, located, "a method name or a mapping {method:, levels:}")
        check_keys(item, COMPRESSION_KEYS, path, located)
        method = item.get("method")
        if method not in METHODS:
            close = difflib.get_close_matches(str(method), METHODS, n=1)
            raise located.error((*path, "method"), f"unknown compression method {method!r}",
                                f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(METHODS)}")
        levels = item.get("levels", [item["level"]] if "level" in item else None)
        if method in ("gptq", "rtn"):
            levels = item.get("bits", levels if levels is not None else 4)
            levels = levels if isinstance(levels, list) else [levels]
            for j, bits in enumerate(levels):
                if bits not in (4, 8):
                    raise located.error((*path, "bits", j), f"{bits!r} bits", "gptq/rtn take 4 or 8 bits")
        elif levels is None:
            if method in ("wanda", "magnitude", "sparsegpt", "prune-heads", "distill", "noise"):
                raise located.error(path, f"{method} needs levels", f"add levels: [...] ({_LEVEL_HELP[method]})")
            levels = [None]
        expect(levels, list, (*path, "levels"), located, "a list of levels")
        options = expect(item.get("options", {}), dict, (*path, "options"), located,
                         "a mapping of compfair compress options (without --)")
        for j, level in enumerate(levels):
            if method == "distill" and level in DISTILL_PRESETS:
                pass  # the paper's students by name (compfair compress distill --preset)
            elif method in _LEVEL_RANGE:
                low, high, kind = _LEVEL_RANGE[method]
                if isinstance(level, bool) or not isinstance(level, kind) or not low < level <= high:
                    raise located.error((*path, "levels", j), f"level {level!r} out of range",
                                        f"{method} levels are {_LEVEL_HELP[method]}")
            label = item.get("label") if len(levels) == 1 and item.get("label") else _label(method, level)
            out.append(Compression(method, level, str(label), options))
    if not out:
        raise located.error(where, "no compressions", "list at least `none`")
    labels = [c.label for c in out]
    for i, label in enumerate(labels):
        if labels.index(label) != i:
            raise located.error(where, f"compression {label!r} listed twice", "remove one")
    return out


_LEVEL_RANGE = {"wanda": (0, 1, float), "magnitude": (0, 1, float), "sparsegpt": (0, 1, float),
                "prune-heads": (0, 1, (int, float)), "noise": (0, float("inf"), (int, float)),
                "distill": (0, 10_000, int)}
_LEVEL_HELP = {"wanda": "sparsity fractions in (0, 1), e.g. [0.3, 0.5]", "magnitude": "sparsity fractions in (0, 1)",
               "sparsegpt": "sparsity fractions in (0, 1)", "prune-heads": "fractions of heads kept in (0, 1]",
               "noise": "Gaussian noise scales > 0 (relative to each weight's std)",
               "distill": "student depths (number of blocks), e.g. [4, 6], or presets A, B, B¬, C, D, D¬"}
DISTILL_PRESETS = ("A", "B", "B¬", "C", "D", "D¬")


def parse(text: str, file: Path) -> Spec:
    raw, located = read_yaml(text, file)
    check_keys(raw, TOP_KEYS, (), located)
    for key in ("name", "tasks", "series"):
        if key not in raw:
            raise located.error((), f"{key!r} is missing", f"add `{key}:` ({TOP_KEYS[key]})")
    name = expect(raw["name"], str, ("name",), located, "a name (text)")
    tasks = raw["tasks"]
    tasks = [tasks] if isinstance(tasks, str) else tasks
    expect(tasks, list, ("tasks",), located, "a list of lm_eval task names")
    for i, task in enumerate(tasks):
        expect(task, str, ("tasks", i), located, "a task name")
    if not tasks:
        raise located.error(("tasks",), "no tasks", "list at least one lm_eval task")
    limit = raw.get("limit")
    if limit is not None:
        expect(limit, (int, float), ("limit",), located, "a number of examples (or null)")
        if limit <= 0:
            raise located.error(("limit",), f"limit {limit}", "write a positive number, or null for all")
    seed = expect(raw.get("seed", 1234), int, ("seed",), located, "an integer")
    batch_size = raw.get("batch_size", 8)
    if not (isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size > 0
            or isinstance(batch_size, str) and batch_size.startswith("auto")):
        raise located.error(("batch_size",), f"batch_size {batch_size!r}", "write a positive integer (or auto)")
    metadata = expect(raw.get("metadata") or {}, dict, ("metadata",), located, "a mapping")
    gen_kwargs = expect(raw.get("gen_kwargs") or "", str, ("gen_kwargs",), located, "text (key=value,...)")
    model_args = expect(raw.get("model_args") or "", str, ("model_args",), located, "text (key=value,...)")
    device = raw.get("device")
    if device is not None:
        expect(device, str, ("device",), located, "a torch device name")
    series = expect(raw["series"], list, ("series",), located, "a list of series")
    if not series:
        raise located.error(("series",), "no series", "list at least one series")
    names = []
    for i, item in enumerate(series):
        expect(item, dict, ("series", i), located, "a mapping (name:, model:/checkpoints:/models:)")
        check_keys(item, SERIES_KEYS, ("series", i), located)
        if not isinstance(item.get("name"), str) or not item["name"]:
            raise located.error(("series", i), "series without a name", "add `name: <short alias>`")
        if item["name"] in names:
            raise located.error(("series", i, "name"), f"series {item['name']!r} named twice", "rename one")
        names.append(item["name"])
        if "compressions" in item:
            item["compressions"] = parse_compressions(item["compressions"], located, ("series", i, "compressions"))
        if "tasks" in item:
            item["tasks"] = [item["tasks"]] if isinstance(item["tasks"], str) else item["tasks"]
            expect(item["tasks"], list, ("series", i, "tasks"), located, "a list of lm_eval task names")
        expect(item.get("metadata", {}), dict, ("series", i, "metadata"), located, "a mapping")
        expect(item.get("gen_kwargs", ""), str, ("series", i, "gen_kwargs"), located, "text (key=value,...)")
    compressions = parse_compressions(raw.get("compressions", ["none"]), located)
    control = raw.get("control")
    if control is not None:
        expect(control, dict, ("control",), located, "a mapping (reference:, quality:)")
        check_keys(control, CONTROL_KEYS, ("control",), located)
    executor = raw.get("executor") or {"kind": "local"}
    if isinstance(executor, str):
        executor = {"kind": executor}
    expect(executor, dict, ("executor",), located, "local, slurm, or a mapping {kind: slurm, partition: ...}")
    if executor.get("kind", "local") not in ("local", "slurm"):
        raise located.error(("executor", "kind"), f"executor {executor.get('kind')!r}", "use local or slurm")
    return Spec(name=name, tasks=tasks, series=series, compressions=compressions, limit=limit, seed=seed,
                batch_size=batch_size, metadata=metadata, gen_kwargs=gen_kwargs, model_args=model_args, device=device,
                control=control, executor={"kind": "local", **executor}, base_dir=Path(file).resolve().parent,
                located=located, text=text)


SHIPPED_SPECS = Path(__file__).resolve().parent / "specs"


def shipped_specs() -> list[str]:
    return sorted(p.stem for p in SHIPPED_SPECS.glob("*.yaml"))


def load_spec(path) -> Spec:
    """A spec file, or the name of a shipped one (pythia-quantization, gpt2-distillation)."""
    path = Path(path)
    if not path.exists() and (SHIPPED_SPECS / f"{path.name}.yaml").is_file():
        path = SHIPPED_SPECS / f"{path.name}.yaml"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise SpecError(f"study spec {path}: cannot be read ({error.strerror}); give the path of a YAML spec or a "
                        f"shipped spec's name ({', '.join(shipped_specs())})") from None
    return parse(text, path)
