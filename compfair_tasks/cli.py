"""The `compfair` command. Each subcommand lives in its own module as `main(argv) -> int`."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand words -> "module:function" taking the remaining argv
COMMANDS = {
    ("demo",): ("compfair_tasks.demo:main", "offline end-to-end run: embedded model, its compressed variants, leaderboard"),
    ("compress", "distill"): ("compressors.distill:main", "distil a GPT-2/Llama-family teacher into a shallower student"),
    ("compress", "prune"): ("compressors.prune:main", "remove attention heads by gradient importance (Michel et al. 2019)"),
    ("compress", "quantize"): ("compressors.quantize:main", "post-training quantization: GPTQ/RTN 4|8-bit, torchao int8, int8"),
    ("compress", "sparsify"): ("compressors.sparsify:main", "one-shot weight sparsity: magnitude, Wanda, SparseGPT (50% or 2:4)"),
    ("leaderboard",): ("leaderboard.cli:main", "lm_eval output folders -> CSV, Markdown, HTML page, plots"),
    ("compare",): ("leaderboard.compare:main", "run the paper's baseline comparisons (teacher, students, DialoGPT, BlenderBot)"),
    ("task-dir",): ("compfair_tasks.cli:print_task_dir", "print the task_configs folder (for lm_eval --include_path)"),
    ("data",): ("compfair_tasks.cli:print_data_sources", "show where each dataset resolves"),
    ("model-dir",): ("compfair_tasks.cli:print_model_dir", "convert an embedded model (once) and print its checkpoint folder"),
}


def _usage() -> str:
    lines = ["usage: compfair <command> [options]   (compfair <command> --help for its options)", "", "commands:"]
    for words, (_, help_text) in COMMANDS.items():
        lines.append(f"  {' '.join(words):<20} {help_text}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for words, (target, _) in sorted(COMMANDS.items(), key=lambda item: -len(item[0])):
        if tuple(argv[: len(words)]) == words:
            module_name, function_name = target.split(":")
            function = getattr(importlib.import_module(module_name), function_name)
            return int(function(argv[len(words):]) or 0)
    print(_usage(), file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
    return 0 if not argv or argv[0] in ("-h", "--help") else 2


def print_task_dir(argv: list[str]) -> int:
    argparse.ArgumentParser(prog="compfair task-dir").parse_args(argv)
    from compfair_tasks._hook import task_configs_dir

    print(task_configs_dir())
    return 0


def print_data_sources(argv: list[str]) -> int:
    argparse.ArgumentParser(prog="compfair data", description="where each dataset resolves").parse_args(argv)
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

    parser = argparse.ArgumentParser(prog="compfair model-dir")
    parser.add_argument("name", nargs="?", default=DEFAULT_MODEL, choices=sorted(EMBEDDED_MODELS))
    print(embedded_model_dir(parser.parse_args(argv).name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
