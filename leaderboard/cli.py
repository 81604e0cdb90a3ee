"""`compfair leaderboard <lm_eval output dirs...> -o <site>`: CSV, Markdown, HTML page and PNG plots."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .collect import collect
from .paired import TESTS, paired_tests
from .render import write_site


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compfair leaderboard", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Turn lm_eval --output_path folders (results_*.json, samples_*.jsonl) into a leaderboard: "
                    "leaderboard.csv, leaderboard.md, paired_tests.csv, index.html (works offline) and PNG plots.",
    )
    parser.add_argument("folders", nargs="+", type=Path, help="lm_eval output folders (searched recursively) "
                        "or results_*.json files")
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder to write the site into")
    parser.add_argument("--pair", nargs=2, action="append", default=[], metavar=("BASELINE", "MODEL"),
                        help="also test MODEL against BASELINE (model names as in the table); "
                             "students are tested against their teachers automatically")
    parser.add_argument("--test", choices=sorted(TESTS), default="bootstrap", help="paired test")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap/permutation resamples")
    parser.add_argument("--seed", type=int, default=0, help="seed of the resampling tests")
    parser.add_argument("--title", default="compfair leaderboard", help="page title")
    parser.add_argument("--measure-latency", action="store_true",
                        help="time a forward pass of every local checkpoint that has no compfair_latency.json yet "
                             "(same machine, same settings: the numbers are comparable with each other only)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for --measure-latency")
    return parser


def measure_missing_latencies(collection, threads: int | None = None) -> bool:
    """Measure every local checkpoint without a latency; True when something was measured."""
    from compfair_tasks.measure import measure_latency

    measured = False
    for run in collection.runs:
        if run.checkpoint_dir is None or run.latency is not None:
            continue
        try:
            record = measure_latency(run.checkpoint_dir, threads=threads)
            print(f"  latency {run.name}: {record['latency_ms']:.1f} ms", flush=True)
            measured = True
        except Exception as error:  # a checkpoint format AutoModel cannot load: leave the cell blank
            collection.problems.append(f"{run.checkpoint_dir}: latency not measured ({type(error).__name__}: {error})")
    return measured


def build(folders, output, pairs=(), test: str = "bootstrap", n_resamples: int = 2000, seed: int = 0,
          title: str = "compfair leaderboard", measure_latency: bool = False, threads: int | None = None):
    """Collect `folders`, run the paired tests and write the site; returns (collection, paired, written files).

    The Python entry point (used by `compfair demo`); `pairs` are (baseline, model) names.
    """
    collection = collect(folders)
    if not collection.runs:
        raise FileNotFoundError("no lm_eval results found:\n  " + "\n  ".join(collection.problems))
    if measure_latency:
        problems = collection.problems
        if measure_missing_latencies(collection, threads):
            collection = collect(folders)
        collection.problems = list(dict.fromkeys(problems + collection.problems))
    for pair in pairs:
        for name in pair:
            collection.run(name)  # KeyError naming the models there are
    paired = paired_tests(collection, [tuple(p) for p in pairs], test, n_resamples, seed)
    written = write_site(collection.frame, paired, Path(output), collection.problems, title)
    return collection, paired, written


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        collection, paired, written = build(args.folders, args.output, args.pair, args.test, args.resamples,
                                            args.seed, args.title, args.measure_latency, args.threads)
    except FileNotFoundError as error:
        print(f"compfair leaderboard: {error}", file=sys.stderr)
        return 1
    except KeyError as error:
        print(f"compfair leaderboard: --pair: {error.args[0]}", file=sys.stderr)
        return 2
    print(f"{len(collection.runs)} model(s), {len(paired)} paired test(s) -> {args.output}")
    for kind, path in written.items():
        print(f"  {kind:<32} {path}")
    for problem in collection.problems:
        print(f"  skipped: {problem}", file=sys.stderr)
    print(f"open {(Path(args.output) / 'index.html').resolve().as_uri()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
