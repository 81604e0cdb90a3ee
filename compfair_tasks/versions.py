"""Which code made a result: compfair's version and git commit, and the versions of the libraries it runs on."""

from __future__ import annotations

import functools
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

LIBRARIES = ("compfair", "torch", "transformers", "lm_eval")


@functools.cache
def software_versions() -> dict:
    """{"compfair": ..., "torch": ..., "transformers": ..., "lm_eval": ..., "compfair_commit": ...} (None if unknown;
    the commit only in a git checkout)."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=10, check=False)
        versions["compfair_commit"] = done.stdout.strip() if done.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        versions["compfair_commit"] = None
    return versions
