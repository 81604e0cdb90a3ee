"""`compfair compare <preset>`: the paper's baseline comparisons, run through the real `lm_eval` CLI.

Each preset names hub models of one family, the tasks, and the prompt format that family needs; the
command runs `python -m lm_eval` once per model (with `--log_samples`, so that paired tests are
possible), then builds the leaderboard with the preset's pairs. `--model` adds checkpoints (the
compfair students of a teacher); `--dry-run` prints the lm_eval commands, to adapt and run by hand.

Before running anything it checks every model (local folder, or hub id in the Hugging Face cache
when offline) and builds every task once, so a missing model or dataset stops the run with the
data layer's own error instead of failing hours into an evaluation.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from compfair_tasks import options, runner
from compfair_tasks.data import metadata_json
from compfair_tasks.hub import offline


@dataclass(frozen=True)
class Model:
    name: str  # hub id or local folder
    backend: str = "causal"  # "causal" or "seq2seq" (lm-eval HFLM backend)
    note: str = ""  # hardware note printed before the run


@dataclass(frozen=True)
class Preset:
    title: str
    models: tuple[Model, ...]
    tasks: str
    pairs: tuple[tuple[str, str], ...] = ()  # (baseline, model) for the paired tests
    metadata: dict = field(default_factory=dict)  # task metadata (--metadata), e.g. the dialogue format
    gen_kwargs: str = ""  # --gen_kwargs
    note: str = ""


GPU_NOTE = "needs a GPU for the full task set (CPU works but takes many hours)"
PRESETS = {
    "gpt2": Preset(
        "GPT-2 vs DistilGPT2 (and compfair students given with --model)",
        (Model("gpt2"), Model("distilgpt2")),
        tasks="compfair",
        pairs=(("gpt2", "distilgpt2"),),
        note="Causal LMs, plain prompts. compfair students of gpt2 (compfair compress ... --teacher gpt2) are "
             "paired with gpt2 automatically through their compfair_compression.json.",
    ),
    "dialogpt": Preset(
        "DialoGPT small / medium / large",
        (Model("microsoft/DialoGPT-small"), Model("microsoft/DialoGPT-medium"),
         Model("microsoft/DialoGPT-large", note=f"762M parameters: {GPU_NOTE}")),
        tasks="compfair_toxicity",
        pairs=(("microsoft/DialoGPT-large", "microsoft/DialoGPT-medium"),
               ("microsoft/DialoGPT-large", "microsoft/DialoGPT-small")),
        # DialoGPT reads a conversation turn as text + EOS: each prompt ends with the EOS token
        metadata={"dialogue": True},
        note="Dialogue format: each toxicity prompt ends with DialoGPT's EOS turn separator (metadata dialogue=true).",
    ),
    "blenderbot": Preset(
        "BlenderBot 400M-distill vs 3B (encoder-decoder)",
        (Model("facebook/blenderbot-400M-distill", backend="seq2seq"),
         Model("facebook/blenderbot-3B", backend="seq2seq", note=f"2.7B parameters, ~11 GB in fp32: {GPU_NOTE}")),
        tasks="compfair_toxicity",
        pairs=(("facebook/blenderbot-3B", "facebook/blenderbot-400M-distill"),),
        # lm-eval sizes a seq2seq decoder from the prompt length; bound it to the decoder start + 20 new tokens
        gen_kwargs="max_length=21",
        note="Encoder-decoder: the prompt goes to the encoder (backend=seq2seq) and the decoder is bounded with "
             "--gen_kwargs max_length=21 (BlenderBot has 128 positions).",
    ),
}


class PreflightError(RuntimeError):
    """A model or dataset that the comparison needs is not available."""


def check_model(name: str) -> None:
    """A local checkpoint folder, or a hub id that is cached (offline) or reachable (online)."""
    folder = Path(name).expanduser()
    if folder.exists() or name.startswith((".", "/", "~")):
        if not folder.is_dir():
            raise PreflightError(f"model {name}: no such folder (give a save_pretrained checkpoint folder or a hub id)")
        if not (folder / "config.json").is_file():
            raise PreflightError(f"model {name}: no config.json in that folder (expected a save_pretrained checkpoint)")
        return
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return
    if offline():
        raise PreflightError(
            f"model {name} is not in the Hugging Face cache and the hub is offline ({offline()} is set). "
            f"Download it where there is network (huggingface-cli download {name}) and copy the cache, "
            f"or pass a local checkpoint folder instead.")
    try:
        hf_hub_download(name, "config.json")
    except Exception as error:  # no network, unknown id or gated model
        raise PreflightError(f"model {name}: cannot be fetched from the Hugging Face hub ({error})") from error


def model_args(model: Model, dtype: str) -> str:
    args = f"pretrained={model.name}"
    if model.backend != "causal":
        args += f",backend={model.backend}"
    return args + (f",dtype={dtype}" if dtype else "")


def check_tasks(tasks: str, metadata: dict) -> None:
    """Build every task once (as lm_eval will), so missing data stops us before any model runs."""
    from lm_eval.tasks import TaskManager, get_task_dict

    try:
        get_task_dict(tasks.split(","), TaskManager(metadata=metadata))
    except Exception as error:  # the data layer's DataNotFoundError, a hub error, an unknown task name
        raise PreflightError(f"tasks {tasks}: {type(error).__name__}: {error}") from error


def results_folder(output: Path, model: Model) -> Path:
    """Where lm_eval writes this model's results under --output_path (its sanitized model name)."""
    from lm_eval.utils import sanitize_model_name

    return output / "results" / sanitize_model_name(model.name)


def lm_eval_command(model: Model, preset: Preset, args) -> list[str]:
    metadata = {**preset.metadata, **json.loads(args.metadata or "{}")}
    return runner.lm_eval_command(model="hf", model_args=model_args(model, args.dtype),
                                  tasks=args.tasks or preset.tasks, output_path=args.output / "results",
                                  batch_size=args.batch_size, device=args.device, limit=args.limit, metadata=metadata, gen_kwargs=preset.gen_kwargs)


def _default_device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compfair compare", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Run a baseline comparison of the compression paper through lm_eval, then build its leaderboard. "
                    "Presets: " + "; ".join(f"{k}: {p.title}" for k, p in PRESETS.items()),
    )
    parser.add_argument("preset", choices=sorted(PRESETS), help="which comparison of the paper to run")
    parser.add_argument("--model", action="append", default=[], metavar="PATH_OR_ID",
                        help="add a model (e.g. a compfair student checkpoint); repeatable")
    parser.add_argument("--tasks", help="lm_eval task list instead of the preset's (e.g. compfair_toxicity_rtp_offline)")
    parser.add_argument("--output", type=options.folder_path, default=Path("compfair-compare"),
                        help="results go to OUTPUT/results, the leaderboard to OUTPUT/site")
    parser.add_argument("--metadata", type=metadata_json, help="JSON merged into the preset's task metadata (e.g. '{\"scorer\": ...}')")
    parser.add_argument("--device", type=options.device, default=None,
                        help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", type=options.dtype_name, default=None,
                        help="model dtype for lm_eval (e.g. float16 on a GPU)")
    parser.add_argument("--batch-size", type=options.lm_eval_batch_size, default="auto",
                        help="lm_eval --batch_size: N, auto or auto:N")
    parser.add_argument("--limit", type=options.float_range(0, low_open=True),
                        help="lm_eval --limit: examples per task, or a fraction if < 1 (for a quick look; not for "
                             "reported numbers)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the lm_eval commands, check every model and task (data included), run nothing")
    parser.add_argument("--rerun", action="store_true",
                        help="evaluate every model again (by default a model evaluated with the same settings is "
                             "skipped, so an interrupted comparison resumes; results made with other settings stop "
                             "the run)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.device = args.device or _default_device()
    preset = PRESETS[args.preset]
    models = list(preset.models) + [Model(name) for name in args.model]
    commands = [lm_eval_command(model, preset, args) for model in models]
    print(f"compfair compare {args.preset}: {preset.title}\n  {preset.note}")
    for model in models:
        if model.note:
            print(f"  note: {model.name}: {model.note}")
    if args.dry_run:  # print the commands, then check what can be checked without running them
        print("\n".join(shlex.join(c) for c in commands))
    missing = []
    for model in models:
        try:
            check_model(model.name)
        except PreflightError as error:
            missing.append(str(error))
    if missing:
        print("compfair compare: nothing was run.\n  " + "\n  ".join(missing), file=sys.stderr)
        return 2
    try:
        metadata = {**preset.metadata, **json.loads(args.metadata or "{}")}
        check_tasks(args.tasks or preset.tasks, {"pretrained": models[0].name, **metadata})
    except PreflightError as error:
        print(f"compfair compare: nothing was run.\n  {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        print("dry run: every model is available and every task builds; nothing was run")
        return 0
    args.output.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    steps = [runner.Step(f"evaluate {model.name}", command, results_folder(args.output, model),
                         inputs=(Path(model.name),) if Path(model.name).exists() else ())
             for model, command in zip(models, commands, strict=True)]
    try:  # hours of evaluation are never thrown away silently: results with other settings stop the run
        runner.run_steps(steps, prog="compfair compare", rerun=args.rerun, on_change="refuse")
    except runner.StepError as error:
        print(error, file=sys.stderr)
        return 2 if isinstance(error, runner.SettingsChanged) else 1
    from .cli import main as leaderboard_main

    pairs = [arg for baseline, other in preset.pairs for arg in ("--pair", baseline, other)]
    status = leaderboard_main([str(args.output / "results"), "-o", str(args.output / "site"),
                               "--title", f"compfair compare: {preset.title}", *pairs])
    print(f"total {time.perf_counter() - start:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
