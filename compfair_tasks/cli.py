"""The `compfair` command. Each subcommand lives in its own module as `main(argv) -> int`."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand words -> "module:function" taking the remaining argv
COMMANDS = {
    ("demo",): ("compfair_tasks.demo:main", "offline demo study: a distilled series (fp32 + int8), sparsity, noise control; report + leaderboard"),
    ("compress", "distill"): ("compressors.distill:main", "distil a GPT-2/Llama-family teacher into a shallower student"),
    ("compress", "prune"): ("compressors.prune:main", "remove attention heads by gradient importance (Michel et al. 2019)"),
    ("compress", "quantize"): ("compressors.quantize:main", "post-training quantization: dynamic int8 (the papers'), per-token int8, GPTQ/RTN 4|8-bit, torchao int8"),
    ("compress", "sparsify"): ("compressors.sparsify:main", "one-shot weight sparsity: magnitude, Wanda, SparseGPT (50% or 2:4)"),
    ("compress", "perturb"): ("compressors.perturb:main", "seeded Gaussian noise on the weights: a quality-degradation control"),
    ("leaderboard",): ("leaderboard.cli:main", "lm_eval output folders -> CSV, Markdown, HTML page, plots"),
    ("study", "run"): ("leaderboard.studies.cli:run", "run a study spec: series of models x compressions, resumable"),
    ("study", "status"): ("leaderboard.studies.cli:status", "a study's cells: done, running, failed (with logs), left"),
    ("study", "report"): ("leaderboard.studies.cli:report", "a study's report: trends, LMS vs SS, quality-matched control"),
    ("compare",): ("leaderboard.compare:main", "run the paper's baseline comparisons (teacher, students, DialoGPT, BlenderBot)"),
    ("task-dir",): ("compfair_tasks.cli:print_task_dir", "print the task_configs folder (for lm_eval --include_path)"),
    ("data",): ("compfair_tasks.cli:print_data_sources", "show where each dataset resolves"),
    ("model-dir",): ("compfair_tasks.cli:print_model_dir", "convert an embedded model (once) and print its checkpoint folder"),
}


def _usage(prefix: tuple[str, ...] = ()) -> str:
    """Usage of `compfair` (or of a command group such as `compfair compress`) with its commands."""
    shown = " ".join(("compfair", *prefix))
    lines = [f"usage: {shown} <command> [options]   ({shown} <command> --help for its options)", "", "commands:"]
    for words, (_, help_text) in COMMANDS.items():
        if words[: len(prefix)] == prefix:
            lines.append(f"  {' '.join(words):<20} {help_text}")
    return "\n".join(lines)


def _group_prefix(argv: list[str]) -> tuple[str, ...]:
    """The longest run of argv's first words that starts some command (`compress` of `compress prune`)."""
    prefix: tuple[str, ...] = ()
    for word in argv:
        if not any(words[: len(prefix) + 1] == (*prefix, word) for words in COMMANDS):
            break
        prefix = (*prefix, word)
    return prefix


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for words, (target, _) in sorted(COMMANDS.items(), key=lambda item: -len(item[0])):
        if tuple(argv[: len(words)]) == words:
            module_name, function_name = target.split(":")
            function = getattr(importlib.import_module(module_name), function_name)
            return _run(" ".join(words), function, argv[len(words):])
    prefix = _group_prefix(argv)
    rest = argv[len(prefix):]
    if rest[:1] in (["-h"], ["--help"]) or not argv:
        print(_usage(prefix))
        return 0
    if not rest:
        print(f"{' '.join(('compfair', *prefix))}: error: a command is missing\n\n{_usage(prefix)}", file=sys.stderr)
        return 2
    print(f"{' '.join(('compfair', *prefix))}: error: unknown command {rest[0]!r}\n\n{_usage(prefix)}", file=sys.stderr)
    return 2


def _run(command: str, function, argv: list[str]) -> int:
    """Run a subcommand; bad input (a CompfairError) prints its one-line message and exits 2."""
    from compfair_tasks.errors import CompfairError

    try:
        return int(function(argv) or 0)
    except CompfairError as error:
        print(f"compfair {command}: error: {error}", file=sys.stderr)
        return 2


def print_task_dir(argv: list[str]) -> int:
    argparse.ArgumentParser(prog="compfair task-dir", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                            description="print the task_configs folder (for lm_eval --include_path)").parse_args(argv)
    from compfair_tasks._hook import task_configs_dir

    print(task_configs_dir())
    return 0


def print_data_sources(argv: list[str]) -> int:
    argparse.ArgumentParser(prog="compfair data", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                            description="where each dataset resolves (explicit path > COMPFAIR_DATA_DIR > shipped "
                                        "> hub) and its license").parse_args(argv)
    from compfair_tasks import data

    for name, spec in data.DATASETS.items():
        try:
            where = str(data.resolve(name))
        except data.DataNotFoundError as error:
            where = f"NOT FOUND ({error})"
        print(f"{name:<16} {spec.license:<20} {where}")
    return 0


def print_model_dir(argv: list[str]) -> int:
    from compfair_tasks.models import DEFAULT_MODEL, EMBEDDED_MODELS, embedded_model_dir

    parser = argparse.ArgumentParser(prog="compfair model-dir", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     description="convert an embedded model (once) and print its checkpoint folder")
    parser.add_argument("name", nargs="?", default=DEFAULT_MODEL, choices=sorted(EMBEDDED_MODELS),
                        help="embedded model: " + "; ".join(f"{m.name} = {m.title}" for m in EMBEDDED_MODELS.values()))
    print(embedded_model_dir(parser.parse_args(argv).name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
