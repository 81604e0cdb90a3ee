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
        prog="compfair leaderboard",
        description="Turn lm_eval --output_path folders (results_*.json, samples_*.jsonl) into a leaderboard: "
                    "leaderboard.csv, leaderboard.md, paired_tests.csv, index.html (works offline) and PNG plots.",
    )
    parser.add_argument("folders", nargs="+", type=Path, help="lm_eval output folders (searched recursively) "
                        "or results_*.json files")
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder to write the site into")
    parser.add_argument("--pair", nargs=2, action="append", default=[], metavar=("BASELINE", "MODEL"),
                        help="also test MODEL against BASELINE (model names as in the table); "
                             "students are tested against their teachers automatically")
    parser.add_argument("--test", choices=sorted(TESTS), default="bootstrap", help="paired test (default: bootstrap)")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap/permutation resamples (default 2000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--title", default="compfair leaderboard")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    collection = collect(args.folders)
    if not collection.runs:
        print("compfair leaderboard: no lm_eval results found.", file=sys.stderr)
        for problem in collection.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    for pair in args.pair:
        for name in pair:
            try:
                collection.run(name)
            except KeyError as error:
                print(f"compfair leaderboard: --pair: {error.args[0]}", file=sys.stderr)
                return 2
    paired = paired_tests(collection, [tuple(p) for p in args.pair], args.test, args.resamples, args.seed)
    written = write_site(collection.frame, paired, args.output, collection.problems, args.title)
    print(f"{len(collection.runs)} model(s), {len(paired)} paired test(s) -> {args.output}")
    for kind, path in written.items():
        print(f"  {kind:<32} {path}")
    for problem in collection.problems:
        print(f"  skipped: {problem}", file=sys.stderr)
    print(f"open file://{(args.output / 'index.html').resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
