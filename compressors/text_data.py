"""Text for compressors (distillation data, head-importance data): hub, local files, or shipped BOLD Wikipedia."""

from __future__ import annotations

import json
import random
from pathlib import Path

from compfair_tasks.data import DataFormatError, DataNotFoundError, read_bold

LOCAL_SUFFIXES = (".txt", ".jsonl", ".json")


def load_texts(source: str | None = None, limit: int | None = None, fraction: float | None = None,
               seed: int = 0) -> list[str]:
    """Non-empty texts from `source`, optionally a seeded random `fraction` and/or the first `limit` of them.

    source: None or "bold_wiki" (the shipped BOLD Wikipedia sentences, a text per person), a local .txt (one text per
    line) / .jsonl (field "text") / .json file or a folder of such files, or a hub dataset id with
    an optional config (`wikitext:wikitext-2-raw-v1`, column "text", train split).
    """
    if fraction is not None and not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of texts, got {limit}")
    # with a limit and no fraction, a hub dataset is streamed: only the first texts are downloaded
    texts = [t.strip() for t in _read(source, limit if fraction is None else None) if t and t.strip()]
    if fraction is not None and fraction < 1:
        keep = max(1, round(len(texts) * fraction))
        texts = [texts[i] for i in sorted(random.Random(seed).sample(range(len(texts)), keep))]
    if limit is not None:
        texts = texts[:limit]
    if not texts:
        raise DataFormatError(f"no text found in {source or 'bold_wiki'}: give a folder/file of .txt or .jsonl "
                         "(field 'text') or a hub dataset id with a 'text' column")
    return texts


def _read(source: str | None, hub_limit: int | None = None) -> list[str]:
    if source in (None, "", "bold_wiki"):
        from compfair_tasks.data import resolve

        return bold_wiki_texts(resolve("bold_wiki").path)
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in LOCAL_SUFFIXES)
        if not files:
            raise DataFormatError(f"folder {path} holds no {', '.join(LOCAL_SUFFIXES)} files")
        return [text for f in files for text in _read_file(f)]
    if path.exists():
        return _read_file(path)
    if path.suffix in LOCAL_SUFFIXES or "/" not in source or source.startswith((".", "/", "~")):
        raise DataNotFoundError(f"text source {source!r} is neither a file nor a folder (nor a hub id 'owner/name'); "
                                "give an existing .txt/.jsonl file or folder")
    return _read_hub(source, hub_limit)


def _read_file(path: Path) -> list[str]:
    from compfair_tasks.data import read_json, read_text

    if path.suffix == ".txt":
        return read_text(path, "text file", allow_empty=True).split("\n")
    if path.suffix == ".jsonl":
        texts = []
        for number, line in enumerate(read_text(path, "text file", allow_empty=True).split("\n"), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataFormatError(f"{path}:{number}: not a JSON line ({error.msg}); fix or delete that "
                                          "line (each line of a .jsonl file is one JSON object)") from None
                texts.append(_text_of(row, f"{path}:{number}"))
        return texts
    if path.name.endswith("_wiki.json"):
        return bold_wiki_texts(path)
    rows = read_json(path, "text file")
    if not isinstance(rows, list):
        raise DataFormatError(f"{path}: a .json text file must hold a list of strings or of objects with a "
                              "'text' field")
    return [_text_of(row, f"{path}: item {index}") for index, row in enumerate(rows)]


def _text_of(row, where: str) -> str:
    if isinstance(row, str):
        return row
    if isinstance(row, dict) and isinstance(row.get("text"), str):
        return row["text"]
    fields = f" (it has {', '.join(map(str, row))})" if isinstance(row, dict) else f" (a {type(row).__name__})"
    raise DataFormatError(f"{where}: no 'text' field{fields}; give each record a 'text' string")


def bold_wiki_texts(path: Path) -> list[str]:
    """One text per person of BOLD Wikipedia files (group -> name -> [sentences]): the person's sentences joined
    by spaces, in file and key order. Not a text per sentence: texts are packed EOS-separated, and a student
    distilled on single sentences learnt to end every continuation after one sentence (the demo's, measured)."""
    files = sorted(Path(path).glob("*_wiki.json")) if Path(path).is_dir() else [Path(path)]
    texts = []
    for file in files:
        for _, _, sentences in read_bold(file):
            texts.append(" ".join(sentence.strip() for sentence in sentences if sentence.strip()))
    return texts


def _read_hub(source: str, limit: int | None = None) -> list[str]:
    import datasets

    from compfair_tasks.data import DataNotFoundError

    name, _, config = source.partition(":")
    try:
        if limit:
            stream = datasets.load_dataset(name, config or None, split="train", streaming=True)
            return [row["text"] for row in stream.take(limit)]
        dataset = datasets.load_dataset(name, config or None, split="train")
    except Exception as error:
        raise DataNotFoundError(
            f"could not load hub dataset {source!r} ({error}); offline, pass a local .txt/.jsonl file or folder, "
            "or omit --data to use the shipped BOLD Wikipedia sentences"
        ) from error
    return list(dataset["text"])


def pack_blocks(texts: list[str], tokenizer, block_size: int):
    """Token ids of all texts, EOS-separated and concatenated, cut into [n_blocks, block_size] (remainder dropped)."""
    import torch

    if block_size < 2:
        raise ValueError(f"block_size must be at least 2, got {block_size}")
    separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids: list[int] = []
    for encoded in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids.extend(encoded + separator)
    n_blocks = len(ids) // block_size
    if n_blocks == 0:
        raise ValueError(f"{len(ids)} tokens of text are fewer than one block of {block_size}: give more text")
    return torch.tensor(ids[: n_blocks * block_size], dtype=torch.long).view(n_blocks, block_size)


MAX_BLOCK_TOKENS = 1 << 17  # a sanity bound; the model's context length is checked once it is known


def add_calibration_arguments(parser, methods: str) -> None:
    """--data, --num-examples and --block-size: the calibration text of a one-shot compressor's `methods`."""
    parser.add_argument("--data", default=None, help=f"calibration text of {methods}: any source "
                        "compressors.text_data.load_texts takes (default: the shipped BOLD Wikipedia sentences)")
    from compfair_tasks import options

    parser.add_argument("--num-examples", type=options.positive_int, default=32, help=f"calibration blocks ({methods})")
    parser.add_argument("--block-size", type=options.int_range(2, MAX_BLOCK_TOKENS), default=256,
                        help="tokens per calibration block (at most the model's context length)")


def check_context(tokens: int, config, option: str = "--block-size") -> None:
    """Refuse `tokens` per sequence past the model's context length (learned positions would index out of range)."""
    from compfair_tasks.errors import CompfairError

    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if limit and tokens > limit:
        raise CompfairError(f"{option} {tokens} exceeds the model's context of {limit} tokens: give at most {limit}")


def calibration_blocks(args, tokenizer):
    """The first --num-examples blocks of --block-size tokens of --data (see add_calibration_arguments)."""
    return pack_blocks(load_texts(args.data, seed=args.seed), tokenizer, args.block_size)[: args.num_examples]
