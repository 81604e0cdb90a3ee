"""`compfair leaderboard <lm_eval output dirs...> -o <site>`: CSV, Markdown, HTML page and PNG plots."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

from compfair_tasks.options import existing_path, int_range, nonnegative_float, nonnegative_int, positive_int

from . import sitedir
from .collect import NoResultsError, collect, to_frame
from .degeneration import DEFAULTS, Thresholds
from .flips import flip_rates
from .paired import MAX_RESAMPLES, MIN_RESAMPLES, TESTS, paired_tests
from .render import write_files
from .sitedir import SiteError

LATENCY_CACHE = "latency"  # folder of the site holding --measure-latency records, one per checkpoint


def build_parser() -> argparse.ArgumentParser:
    defaults = Thresholds()
    parser = argparse.ArgumentParser(
        prog="compfair leaderboard",
        description="Turn lm_eval --output_path folders (results_*.json, samples_*.jsonl) into a leaderboard: "
                    "leaderboard.csv, leaderboard.md, paired_tests.csv, flip_rates.csv, index.html (works offline) "
                    "and PNG plots. The output folder is replaced as a whole, in one swap, under a lock.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("folders", nargs="+", type=existing_path, help="lm_eval output folders (searched recursively) "
                        "or results_*.json files")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="site folder (new, empty, or a previous site: it is replaced)")
    parser.add_argument("--pair", nargs=2, action="append", default=[], metavar=("BASELINE", "MODEL"),
                        help="also test MODEL against BASELINE (model names as in the table); "
                             "students are tested against their teachers automatically")
    parser.add_argument("--test", choices=sorted(TESTS), default="bootstrap", help="paired test")
    parser.add_argument("--resamples", type=int_range(MIN_RESAMPLES, MAX_RESAMPLES), default=2000,
                        help="bootstrap/permutation resamples (fewer where resamples x docs would not fit in memory; "
                             "the count used is in paired_tests.csv)")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the resampling tests")
    parser.add_argument("--title", default="compfair leaderboard", help="page title")
    parser.add_argument("--measure-latency", action="store_true",
                        help="time a forward pass of every local checkpoint without a latency; the measurements "
                             f"are kept in the site ({LATENCY_CACHE}/), never in the checkpoint folders, and reused "
                             "by the next build (same machine, same settings: comparable with each other only)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch threads for --measure-latency")
    parser.add_argument("--lock-timeout", type=nonnegative_float, default=600.0,
                        help="seconds to wait for another build of the same folder before stopping")
    flag = parser.add_argument_group("degeneration flag (a compressed model against its teacher)")
    flag.add_argument("--fluency-factor", type=float, default=defaults.fluency_factor,
                      help="flag when toxicity fell while fluency perplexity rose past this many times the teacher's")
    flag.add_argument("--distinct-ratio", type=float, default=defaults.distinct_ratio,
                      help="... or distinct-n fell below this fraction of the teacher's")
    flag.add_argument("--empty-margin", type=float, default=defaults.empty_margin,
                      help="... or the share of empty continuations rose by more than this")
    flag.add_argument("--lms-floor", type=float, default=defaults.lms_floor,
                      help="flag when StereoSet SS moved toward 50 while LMS fell below this (chance: 50)")
    flag.add_argument("--lms-margin", type=float, default=defaults.lms_margin,
                      help="... or LMS fell by more than this many points")
    return parser


def _weights_signature(checkpoint: Path) -> list:
    return sorted([p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in checkpoint.iterdir()
                  if p.is_file() and p.suffix in (".safetensors", ".bin", ".pt", ".gguf", ".json"))


def _cache_file(checkpoint: Path) -> str:
    resolved = str(checkpoint.resolve())
    return f"{checkpoint.name}-{hashlib.sha256(resolved.encode()).hexdigest()[:12]}.json"


def measure_latency(checkpoint: Path, save_to: Path, threads: int | None) -> dict:
    """Time `checkpoint`, saving the record to `save_to` (in the site, never in the checkpoint folder)."""
    from compfair_tasks.measure import measure_latency as measure

    return measure(checkpoint, save_to=save_to, threads=threads)


def cached_latencies(collection, site: Path, staged: Path, measure: bool, threads: int | None = None) -> None:
    """Fill the runs' latencies from the previous site's measurements (still valid: same checkpoint files), and
    measure the missing ones when `measure`; every record used is kept in `staged`/LATENCY_CACHE."""
    keep = staged / LATENCY_CACHE
    for run in collection.runs:
        checkpoint = run.checkpoint_dir
        if checkpoint is None or run.latency is not None:
            continue
        name, signature = _cache_file(checkpoint), _weights_signature(checkpoint)
        record = None
        try:
            record = json.loads((site / LATENCY_CACHE / name).read_text())
        except (OSError, ValueError):
            pass
        if not isinstance(record, dict) or record.get("weights") != signature:
            record = None
        if record is None and measure:
            keep.mkdir(exist_ok=True)
            try:
                record = measure_latency(checkpoint, keep / name, threads)
            except Exception as error:  # a checkpoint format AutoModel cannot load: leave the cell blank
                collection.problems.append(f"{checkpoint}: latency not measured ({type(error).__name__}: {error})")
                continue
            record |= {"checkpoint": str(checkpoint.resolve()), "weights": signature}
            print(f"  latency {run.name}: {record['latency_ms']:.1f} ms", flush=True)
        if record is not None:
            keep.mkdir(exist_ok=True)
            (keep / name).write_text(json.dumps(record, indent=2))
            run.latency = record
    collection.frame = to_frame(collection.runs)


def build(folders, output, pairs=(), test: str = "bootstrap", n_resamples: int = 2000, seed: int = 0,
          title: str = "compfair leaderboard", measure_latency: bool = False, threads: int | None = None,
          limits: Thresholds = DEFAULTS, lock_timeout: float = 600.0):
    """Collect `folders`, run the paired tests and flip rates, and replace the site in `output` in one swap;
    returns (collection, paired, written files). The Python entry point; `pairs` are (baseline, model) names."""
    output = Path(output)
    with sitedir.publish(output, lock_timeout, inputs=folders) as staged:
        collection = collect(folders)
        if not collection.runs:
            raise NoResultsError("no lm_eval results found (" + "; ".join(collection.problems) + "); give the "
                                 "--output_path folders of lm_eval runs, or their results_*.json files")
        cached_latencies(collection, output, staged, measure_latency, threads)
        for pair in pairs:
            for name in pair:
                collection.run(name)  # KeyError naming the models there are
        pairs = [tuple(p) for p in pairs]
        paired = paired_tests(collection, pairs, test, n_resamples, seed)
        flips = flip_rates(collection, pairs)
        collection.problems[:] = list(dict.fromkeys(collection.problems))  # a file read by two steps: said once
        written = write_files(staged, collection.frame, paired, flips, collection.problems, title, limits)
    return collection, paired, {kind: output / path.relative_to(staged) for kind, path in written.items()}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    limits = Thresholds(args.fluency_factor, args.distinct_ratio, args.empty_margin, args.lms_floor, args.lms_margin)
    for name, value, low, high in (("--fluency-factor", limits.fluency_factor, 1.0, math.inf),
                                   ("--distinct-ratio", limits.distinct_ratio, 0.0, 1.0),
                                   ("--empty-margin", limits.empty_margin, 0.0, 1.0),
                                   ("--lms-floor", limits.lms_floor, 0.0, 100.0),
                                   ("--lms-margin", limits.lms_margin, 0.0, 100.0)):
        if not low <= value <= high:
            parser.error(f"{name} {value:g} is outside [{low:g}, {high:g}]")
    try:
        collection, paired, written = build(args.folders, args.output, args.pair, args.test, args.resamples,
                                            args.seed, args.title, args.measure_latency, args.threads, limits,
                                            args.lock_timeout)
    except NoResultsError as error:
        print(f"compfair leaderboard: error: {error}", file=sys.stderr)
        return 2
    except SiteError as error:
        print(f"compfair leaderboard: {error}", file=sys.stderr)
        return 2
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
