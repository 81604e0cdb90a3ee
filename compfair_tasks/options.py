"""Argparse types shared by every compfair command: a bad option value stops at parse time, before any model loads.

    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--sparsity", type=fraction_open)
    parser.add_argument("--latency-tokens", type=int_range(1, 1 << 16))
    parser.add_argument("--device", type=device)

Each type raises argparse.ArgumentTypeError with what was wrong and what to give instead; argparse
prints it as `<prog>: error: argument --x: <message>` and exits 2. Floats refuse NaN and infinities.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

# what `torch_dtype`/`dtype=` of transformers and lm_eval's hf model accept besides a torch float dtype name
DTYPE_WORDS = ("auto",)


def _number(text: str, kind: type, what: str):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give {what}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number; give {what}")
    return value


def int_range(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An integer type with low <= value <= high (None: unbounded on that side)."""
    what = _describe("an integer", low, high)

    def parse(text: str) -> int:
        value = _number(text, int, what)
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is out of range; give {what}")
        return value
    parse.__name__ = "integer"  # argparse names the type in "invalid <name> value" messages
    return parse


def float_range(low: float | None = None, high: float | None = None, low_open: bool = False,
                high_open: bool = False) -> Callable[[str], float]:
    """A finite float in [low, high]; `low_open`/`high_open` exclude the bound itself."""
    what = _describe("a number", low, high, low_open, high_open)

    def parse(text: str) -> float:
        value = _number(text, float, what)
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            raise argparse.ArgumentTypeError(f"{value:g} is out of range; give {what}")
        return value
    parse.__name__ = "number"
    return parse


def _describe(kind: str, low, high, low_open: bool = False, high_open: bool = False) -> str:
    def shown(bound) -> str:
        return str(bound) if isinstance(bound, int) else f"{bound:g}"
    if low is not None and high is not None:
        return f"{kind} in {'(' if low_open else '['}{shown(low)}, {shown(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"{kind} {'>' if low_open else '>='} {shown(low)}"
    if high is not None:
        return f"{kind} {'<' if high_open else '<='} {shown(high)}"
    return kind


positive_int = int_range(1)
nonnegative_int = int_range(0)
positive_float = float_range(0, low_open=True)
nonnegative_float = float_range(0)
fraction_open = float_range(0, 1, low_open=True, high_open=True)  # e.g. a sparsity: 0 and 1 mean nothing or all
seed = int_range(0, 2**32 - 1)  # what numpy's and torch's seeding take


def checked(parse: Callable[[str], object]) -> Callable[[str], object]:
    """An argparse type from a parser function whose ValueError message names the fix (argparse would drop it)."""
    def parse_option(text: str):
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    parse_option.__name__ = parse.__name__
    return parse_option


def lm_eval_batch_size(text: str) -> str:
    """lm_eval's --batch_size: a positive integer, auto, or auto:N (N positive)."""
    word, _, times = text.partition(":")
    if (word == "auto" and (not times or times.isdigit() and int(times) > 0)) or (text.isdigit() and int(text) > 0):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not a batch size; give a positive integer, auto or auto:N")


def device(text: str) -> str:
    """A torch device this machine has: cpu, cuda, cuda:N, mps, xpu... (checked against torch)."""
    import torch

    try:
        parsed = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device; give cpu, cuda, cuda:N or mps") from None
    if parsed.type == "cpu":
        return text
    backend = getattr(torch, parsed.type, None)
    if parsed.type == "mps":
        available, count = torch.backends.mps.is_available(), 1
    elif backend is not None and hasattr(backend, "is_available"):
        available = backend.is_available()
        count = backend.device_count() if available and hasattr(backend, "device_count") else 0
    else:
        available, count = False, 0
    if not available:
        raise argparse.ArgumentTypeError(f"{text!r}: this torch ({torch.__version__}) has no usable {parsed.type} "
                                         f"device; give cpu (or install a torch build for {parsed.type})")
    if parsed.index is not None and parsed.index >= count:
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has {count} {parsed.type} device(s); "
                                         f"give an index below {count}")
    return text


def dtype_name(text: str) -> str:
    """A float dtype name transformers and lm_eval accept: auto, float32, float16, bfloat16, ..."""
    import torch

    if text in DTYPE_WORDS or (isinstance(getattr(torch, text, None), torch.dtype)
                               and getattr(torch, text).is_floating_point):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not a float dtype; give auto, float32, float16 or bfloat16")


def existing_path(text: str) -> Path:
    """A file or folder that exists."""
    path = Path(text).expanduser()
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist; give an existing file or folder")
    return path


def existing_file(text: str) -> Path:
    path = existing_path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a file; give a file")
    return path


def folder_path(text: str) -> Path:
    """A folder to write into: it may not exist yet, but must not be a file (nor sit under one)."""
    path = Path(text).expanduser()
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                raise argparse.ArgumentTypeError(f"{part} is a file, not a folder; give a folder path")
            break
    return path
