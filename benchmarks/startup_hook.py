"""Interpreter start-up cost of compfair's startup hook (target: < 50 ms; it is ~1-2 ms).

Runs `python -X importtime -c pass` repeatedly and reads the cumulative import time of
`compfair_tasks._hook` (what compfair.pth costs every interpreter), beside the whole start-up.
"""

import re
import statistics
import subprocess
import sys
import time

RUNS = 15


def one_run() -> tuple[float, float]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], capture_output=True, text=True)
    wall_ms = (time.perf_counter() - start) * 1000
    match = re.search(r"\|\s*(\d+) \|\s*compfair_tasks\._hook", done.stderr)
    if not match:
        sys.exit("compfair's startup hook did not run: is compfair installed (pip install -e .)?")
    return int(match.group(1)) / 1000, wall_ms


def main():
    hook_ms, wall_ms = zip(*(one_run() for _ in range(RUNS)))
    hook, wall = statistics.median(hook_ms), statistics.median(wall_ms)
    print(f"startup hook import: {hook:.2f} ms (median of {RUNS}), whole interpreter start-up: {wall:.1f} ms")
    print(f"hook share of start-up: {hook / wall:.3f}; hook vs 50 ms budget: {hook / 50:.3f}")


if __name__ == "__main__":
    main()
