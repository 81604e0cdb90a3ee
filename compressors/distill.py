"""Distil a GPT-2- or Llama-family causal LM into a shallower student (the DistilGPT2 recipe).

The student is the teacher's config with fewer blocks, initialised from chosen teacher blocks (plus
embeddings, final norm, LM head) or at random. Training runs through the Hugging Face `Trainer`, so
`accelerate launch` / `torchrun` scale it out and checkpoints resume exactly. Loss per predicted token:

    alpha_ce * T^2 * KL(teacher_T || student_T) + alpha_clm * CE(student, next token)
    + alpha_cos * (1 - cos(student last hidden, teacher last hidden))

`compfair compress distill --teacher <dir> --preset B --data <files> --max-steps 50 --output <dir>`
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import fcntl
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback

from compfair_tasks import options

METHOD = "distillation"
WRITER = "compfair compress distill"  # in the output marker: whose unfinished run a folder holds
SETTINGS_FILE = "compfair_distill_settings.json"
CHECKPOINTS = "checkpoints"

# The paper's students of 12-block GPT-2: blocks kept and initialisation. Deeper or shallower
# teachers keep the same fraction of their blocks (B of a 30-block teacher has 15).
REFERENCE_DEPTH = 12
PRESETS = {"A": (4, "teacher"), "B": (6, "teacher"), "B¬": (6, "random"),
           "C": (8, "teacher"), "D": (10, "teacher"), "D¬": (10, "random")}
_NOT_SUFFIXES = ("¬", "not", "_not", "-not", "-", "~", "!", "neg")

# --layers auto: keep the blocks of highest Block Influence on calibration texts from the training text
AUTO = "auto"

# Where each supported family keeps its transformer blocks.
BLOCK_LISTS = ("transformer.h", "model.layers", "gpt_neox.layers", "model.decoder.layers")


class DistillError(ValueError):
    """A problem with the distillation request; the message names the fix."""


# ---------------------------------------------------------------------------- student shape

def canonical_preset(name: str) -> str:
    """'B¬', 'Bnot', 'b-', 'B~' -> 'B¬'; 'a' -> 'A'."""
    text = name.strip()
    letter, suffix = text[:1].upper(), text[1:].strip().lower()
    if suffix in _NOT_SUFFIXES:
        suffix = "¬"
    preset = letter + suffix
    if preset not in PRESETS:
        raise DistillError(f"unknown preset {name!r}: choose from {', '.join(PRESETS)} (B¬ may be written Bnot or B-)")
    return preset


def preset_depth(preset: str, teacher_depth: int) -> int:
    blocks = PRESETS[canonical_preset(preset)][0]
    return max(1, math.floor(blocks * teacher_depth / REFERENCE_DEPTH + 0.5))


def evenly_spaced_layers(n: int, depth: int) -> list[int]:
    """n of depth block indices, first and last included; (6, 12) gives DistilGPT2's [0, 2, 4, 7, 9, 11]."""
    if n == 1:
        return [0]
    return [math.floor(i * (depth - 1) / (n - 1) + 0.5) for i in range(n)]


def parse_layer_list(text: str) -> list[int] | str:
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part != ""]
    except ValueError:
        raise DistillError(f"--layers takes comma-separated block indices such as 0,2,4,7,9,11 or 'auto', "
                          f"got {text!r}") from None


def choose_layers(teacher_depth: int, num_layers: int | None = None, layers: list[int] | None = None) -> list[int]:
    """The teacher blocks the student keeps: an explicit list (validated) or `num_layers` evenly spaced."""
    if layers is not None:
        if not layers:
            raise DistillError("--layers is empty: give block indices such as 0,2,4,7,9,11")
        bad = [i for i in layers if not 0 <= i < teacher_depth]
        if bad:
            raise DistillError(f"--layers {bad} outside the teacher's blocks 0..{teacher_depth - 1}")
        if any(b <= a for a, b in zip(layers, layers[1:])):
            raise DistillError(f"--layers {layers} must be strictly increasing (each teacher block at most once)")
        if num_layers is not None and num_layers != len(layers):
            raise DistillError(f"--num-layers {num_layers} disagrees with the {len(layers)} blocks of --layers")
        num_layers = len(layers)
    if num_layers is None or num_layers < 1:
        raise DistillError(f"the student needs at least one block, got {num_layers}")
    if num_layers >= teacher_depth:
        raise DistillError(f"a student of {num_layers} blocks is not smaller than its {teacher_depth}-block teacher: "
                           f"choose fewer than {teacher_depth}")
    return list(layers) if layers is not None else evenly_spaced_layers(num_layers, teacher_depth)


# ---------------------------------------------------------------------------- block influence

def calibration_batches(texts: list[str], tokenizer, n_texts: int, max_tokens: int, seed: int = 0,
                        batch_size: int = 8) -> list[dict]:
    """A seeded sample of n_texts texts, each cut to max_tokens, as right-padded batches with attention masks."""
    import random

    if n_texts < 1 or max_tokens < 2:
        raise DistillError(f"block influence needs at least 1 calibration text of at least 2 tokens, got "
                           f"--calibration-texts {n_texts} --calibration-tokens {max_tokens}")
    chosen = random.Random(seed).sample(range(len(texts)), min(n_texts, len(texts)))
    encoded = [ids[:max_tokens] for ids in tokenizer([texts[i] for i in chosen], add_special_tokens=False)["input_ids"]]
    encoded = [ids for ids in encoded if ids]
    batches = []
    for start in range(0, len(encoded), batch_size):
        group = encoded[start:start + batch_size]
        width = max(map(len, group))
        ids = torch.zeros(len(group), width, dtype=torch.long)
        mask = torch.zeros(len(group), width, dtype=torch.long)
        for row, tokens in enumerate(group):
            ids[row, :len(tokens)] = torch.tensor(tokens)
            mask[row, :len(tokens)] = 1
        batches.append({"input_ids": ids, "attention_mask": mask})
    return batches


@torch.no_grad()
def block_influence(model, batches: list[dict]) -> list[float]:
    """BI_i = 1 - mean over real tokens of cos(input of block i, output of block i) (ShortGPT, Men et al. 2024).

    hidden_states[i] is block i's input and [i + 1] its output, except the last entry: transformers
    replaces it by the final norm's output (LayerNorm / RMSNorm turn its direction), so the last
    block's raw output is taken by a forward hook on that block instead.
    """
    blocks = model.get_submodule(blocks_prefix(model))
    last_output = []
    hook = blocks[-1].register_forward_hook(
        lambda module, args, output: last_output.append(output[0] if isinstance(output, tuple) else output))
    was_training = model.training
    model.eval()
    sums, count = torch.zeros(len(blocks), dtype=torch.float64), 0
    try:
        for batch in batches:
            last_output.clear()
            device = next(model.parameters()).device
            out = model(**{k: v.to(device) for k, v in batch.items()}, output_hidden_states=True, use_cache=False)
            states = [*out.hidden_states[:-1], last_output[-1]]
            mask = batch["attention_mask"].to(device).bool()
            for i in range(len(blocks)):
                cosine = F.cosine_similarity(states[i].double(), states[i + 1].double(), dim=-1)
                sums[i] += cosine[mask].sum().cpu()
            count += int(mask.sum())
    finally:
        hook.remove()
        model.train(was_training)
    return [float(1 - total / count) for total in sums]


def influence_record(teacher, tokenizer, texts: list[str], settings) -> dict:
    """Block influence of every teacher block on a seeded sample of the training texts, as recorded."""
    batches = calibration_batches(texts, tokenizer, settings.calibration_texts, settings.calibration_tokens,
                                  settings.seed)
    record = {"definition": "1 - mean over tokens of cos(block input, block output) (ShortGPT)",
              "scores": block_influence(teacher, batches),
              "calibration_texts": sum(len(b["input_ids"]) for b in batches),
              "calibration_tokens": sum(int(b["attention_mask"].sum()) for b in batches),
              "max_tokens_per_text": settings.calibration_tokens}
    print(f"distil: block influence on {record['calibration_texts']} texts, {record['calibration_tokens']} tokens: "
          + " ".join(f"{i}:{score:.3f}" for i, score in enumerate(record["scores"])), file=sys.stderr)
    return record


def highest_influence_layers(scores: list[float], keep: int) -> list[int]:
    """The `keep` blocks of highest influence, in model order (ties keep the earlier block)."""
    ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return sorted(ranked[:keep])


# ---------------------------------------------------------------------------- models

def load_teacher(name_or_path: str, dtype=torch.float32):
    """A causal LM in eval mode without gradients. Embedded model names (smollm2-135m) work offline."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    source = _teacher_source(name_or_path)
    try:
        config = AutoConfig.from_pretrained(source)
    except OSError as error:
        raise DistillError(f"teacher {name_or_path!r} not found ({error.__class__.__name__}): give a checkpoint "
                           "folder, an embedded model name (smollm2-135m), or a hub id (offline: one already in the "
                           "HF cache)") from error
    if getattr(config, "is_encoder_decoder", False) or config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise DistillError(f"teacher {name_or_path} ({config.model_type}) is not a decoder-only causal LM: "
                           "distillation needs a GPT-2- or Llama-family model")
    teacher = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    blocks_prefix(teacher)  # fails early, naming the supported families
    teacher.eval().requires_grad_(False)
    return teacher


def _teacher_source(name_or_path: str) -> str:
    from compfair_tasks.models import resolve_model

    return resolve_model(name_or_path, "--teacher")  # embedded names, missing folders, int8 folders


def blocks_prefix(model) -> str:
    """Dotted path of the model's list of transformer blocks (`transformer.h`, `model.layers`, ...)."""
    depth = model.config.num_hidden_layers
    for path in BLOCK_LISTS:
        try:
            blocks = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(blocks, torch.nn.ModuleList) and len(blocks) == depth:
            return path
    raise DistillError(f"{type(model).__name__} keeps its blocks in none of {', '.join(BLOCK_LISTS)}: "
                       "distillation supports GPT-2-family and Llama-family causal LMs")


def student_config(teacher_config, layers: list[int]):
    config = copy.deepcopy(teacher_config)
    depth = teacher_config.num_hidden_layers
    config.num_hidden_layers = len(layers)  # GPT2Config maps this onto n_layer
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == depth:  # sliding/full attention per block (Gemma 3)
        config.layer_types = [layer_types[i] for i in layers]
    return config


def make_student(teacher, layers: list[int], init: str = "teacher", seed: int = 0):
    """A student with len(layers) blocks: teacher block layers[i] copied into block i, or all random."""
    from transformers import AutoModelForCausalLM, set_seed

    if init not in ("teacher", "random"):
        raise DistillError(f"init must be 'teacher' or 'random', got {init!r}")
    set_seed(seed)
    student = AutoModelForCausalLM.from_config(student_config(teacher.config, layers), dtype=teacher.dtype)
    student.generation_config = copy.deepcopy(teacher.generation_config)
    if init == "teacher":
        student.load_state_dict(teacher_weights_for(student, teacher, layers))
    return student.train()


def teacher_weights_for(student, teacher, layers: list[int]) -> dict:
    """Student state-dict names -> teacher tensors: block i reads teacher block layers[i], the rest same name."""
    prefix = blocks_prefix(teacher) + "."
    source = teacher.state_dict()
    mapped = {}
    for name in student.state_dict():
        teacher_name = name
        if name.startswith(prefix):
            index, rest = name[len(prefix):].split(".", 1)
            teacher_name = f"{prefix}{layers[int(index)]}.{rest}"
        mapped[name] = source[teacher_name]
    return mapped


# ---------------------------------------------------------------------------- loss

@dataclass(frozen=True)
class LossWeights:
    temperature: float = 2.0
    alpha_ce: float = 0.5
    alpha_clm: float = 0.5
    alpha_cos: float = 0.0

    def __post_init__(self):
        if self.temperature <= 0:
            raise DistillError(f"temperature must be positive, got {self.temperature}")
        weights = (self.alpha_ce, self.alpha_clm, self.alpha_cos)
        if min(weights) < 0 or sum(weights) == 0:
            raise DistillError(f"loss weights must be >= 0 and not all zero, got ce/clm/cos = {weights}")

    def total(self, sums: dict) -> torch.Tensor:
        return self.alpha_ce * sums["kl"] + self.alpha_clm * sums["clm"] + self.alpha_cos * sums["cos"]


def loss_sums(student_out, teacher_out, labels: torch.Tensor, weights: LossWeights) -> tuple[dict, torch.Tensor]:
    """Each loss term summed over the predicted positions (position t predicts token t+1), and their count.

    Summing (not averaging) lets the caller divide by the token count of the whole accumulated batch.
    """
    targets = labels[:, 1:]
    mask = targets != -100
    # views, not masked copies: the [tokens, vocab] tensors dominate memory and time
    student_logits = student_out.logits[:, :-1].float()
    teacher_logits = teacher_out.logits[:, :-1].float()
    t = weights.temperature
    kl_per_position = F.kl_div(F.log_softmax(student_logits / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1),
                               reduction="none", log_target=True).sum(-1)
    sums = {
        "kl": (kl_per_position * mask).sum() * t**2,
        "clm": F.cross_entropy(student_logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum"),
        "cos": student_logits.new_zeros(()),
    }
    if weights.alpha_cos > 0:
        cosine = F.cosine_similarity(student_out.hidden_states[-1][:, :-1].float(),
                                     teacher_out.hidden_states[-1][:, :-1].float(), dim=-1)
        sums["cos"] = ((1 - cosine) * mask).sum()
    return sums, mask.sum()


def _forward_both(student, teacher, batch: dict, weights: LossWeights):
    kwargs = {"input_ids": batch["input_ids"], "output_hidden_states": weights.alpha_cos > 0}
    if batch.get("attention_mask") is not None:
        kwargs["attention_mask"] = batch["attention_mask"]
    student_out = student(**kwargs)
    with torch.no_grad():
        teacher_out = teacher(**kwargs)
    return student_out, teacher_out


@torch.no_grad()
def evaluate(student, teacher, blocks: torch.Tensor, weights: LossWeights = LossWeights(), batch_size: int = 8) -> dict:
    """Mean per predicted token of each loss term and the weighted total, on `blocks` [n, block_size]."""
    was_training = student.training
    student.eval()
    device = next(student.parameters()).device
    totals, count = {"kl": 0.0, "clm": 0.0, "cos": 0.0}, 0
    for start in range(0, len(blocks), batch_size):
        ids = blocks[start:start + batch_size].to(device)
        sums, n = loss_sums(*_forward_both(student, teacher, {"input_ids": ids}, weights), ids, weights)
        for key in totals:
            totals[key] += float(sums[key])
        count += int(n)
    student.train(was_training)
    means = {key: value / count for key, value in totals.items()}
    return {**means, "loss": float(weights.total(means))}


class DistillationTrainer(Trainer):
    """`Trainer` whose loss is the distillation loss against a frozen teacher.

    The loss is summed over tokens and divided by `num_items_in_batch`, the token count of the whole
    optimizer step (all gradient-accumulation micro-batches, all processes), so accumulation and
    multi-GPU give the gradient of one big batch. Hence `loss_is_scaled_for_ga`: dividing once more by
    the accumulation steps would shrink it, and averaging per micro-batch without dividing would
    inflate it by the accumulation steps (the 2x seen with transformers 5).
    """

    loss_is_scaled_for_ga = True

    def __init__(self, *args, teacher, loss_weights: LossWeights = LossWeights(), **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = teacher.to(self.args.device).eval().requires_grad_(False)
        self.loss_weights = loss_weights
        self.model_accepts_loss_kwargs = True  # makes Trainer count num_items_in_batch for every step
        self._term_sums: dict[str, float] = {}
        self._term_steps = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        student_out, teacher_out = _forward_both(model, self.teacher, inputs, self.loss_weights)
        sums, count = loss_sums(student_out, teacher_out, inputs["labels"], self.loss_weights)
        if num_items_in_batch is None:
            denominator = count
        else:
            # DataParallel hands an [n_gpu, 1] copy of the same count; our loss already covers the whole batch
            denominator = num_items_in_batch.reshape(-1)[0] if torch.is_tensor(num_items_in_batch) else num_items_in_batch
        loss = self.loss_weights.total(sums) / denominator
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            # the count is global across processes; DDP averages gradients over them
            loss = loss * self.accelerator.num_processes
        if model.training:  # per-term means for the progress log, read out (one device sync) at logging time
            for key, value in sums.items():
                self._term_sums[key] = self._term_sums.get(key, 0.0) + value.detach() / count.clamp(min=1)
            self._term_steps += 1
        return (loss, student_out) if return_outputs else loss

    def log(self, logs: dict, start_time=None) -> None:
        if "loss" in logs and self._term_steps:
            logs.update({key: round(float(value) / self._term_steps, 4) for key, value in self._term_sums.items()})
            self._term_sums, self._term_steps = {}, 0
        super().log(logs, start_time)


class SkipFinalCheckpoint(TrainerCallback):
    """The finished model is saved right after the last step; a checkpoint of it (with optimizer state,
    3x the model) would only be deleted. A run killed before that save resumes from the last periodic one."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps and state.global_step % args.save_steps != 0:
            control.should_save = False
        return control


class PackedBlocks(torch.utils.data.Dataset):
    """Fixed-length token blocks as causal-LM examples.

    labels = inputs with the first token masked: no position predicts it, and masking it makes
    Trainer's `num_items_in_batch` the number of predicted tokens whether or not it shifts labels
    before counting (transformers 5.23 counts all labels for GPT-2: a loss 16/15 too small at 16 tokens).
    """

    def __init__(self, blocks: torch.Tensor):
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> dict:
        block = self.blocks[index]
        labels = block.clone()
        labels[0] = -100
        return {"input_ids": block, "attention_mask": torch.ones_like(block), "labels": labels}


# ---------------------------------------------------------------------------- the run

@dataclass
class DistillSettings:
    output: str
    teacher: str = "smollm2-135m"
    preset: str | None = None
    num_layers: int | None = None
    layers: list[int] | str | None = None  # or AUTO
    init: str | None = None
    calibration_texts: int = 64
    calibration_tokens: int = 128
    data: str | None = None
    data_limit: int | None = None
    data_fraction: float | None = None
    block_size: int = 256
    eval_blocks: int = 16
    batch_size: int = 8
    grad_accum: int = 1
    learning_rate: float = 5e-4
    warmup: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 5.0
    max_steps: int = -1
    epochs: float = 1.0
    save_steps: int = 500
    logging_steps: int = 10
    seed: int = 0
    temperature: float = LossWeights.temperature  # the loss defaults live in LossWeights
    alpha_ce: float = LossWeights.alpha_ce
    alpha_clm: float = LossWeights.alpha_clm
    alpha_cos: float = LossWeights.alpha_cos
    bf16: bool = False
    keep_checkpoints: bool = False
    overwrite: bool = False

    # changing these does not change the trained weights, so a resumed run may differ in them
    RESUME_FREE = ("output", "save_steps", "logging_steps", "keep_checkpoints", "overwrite")

    def loss_weights(self) -> LossWeights:
        return LossWeights(self.temperature, self.alpha_ce, self.alpha_clm, self.alpha_cos)

    def student_plan(self, teacher_depth: int, influence: list[float] | None = None) -> tuple[list[int], str]:
        """(teacher blocks kept, init): explicit --layers / --num-layers / --init win over the preset (default B).

        With --layers auto the student keeps its number of blocks of highest `influence` (one score per block).
        """
        preset = canonical_preset(self.preset or "B")
        explicit = None if self.layers == AUTO else self.layers
        num_layers = self.num_layers
        if num_layers is None and explicit is None:
            num_layers = preset_depth(preset, teacher_depth)
        layers = choose_layers(teacher_depth, num_layers, explicit)
        if self.layers == AUTO:
            if influence is None or len(influence) != teacher_depth:
                raise DistillError(f"--layers auto needs one block influence score per teacher block ({teacher_depth})")
            layers = highest_influence_layers(influence, len(layers))
        return layers, self.init or PRESETS[preset][1]

    def for_resume(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in self.RESUME_FREE}


def distill(settings: DistillSettings, callbacks=None) -> dict:
    """Train (or resume) the student, save it under settings.output and return its compression record.

    Nothing is touched before every input is checked: the output folder (compressors.output rules), the
    teacher, the data and the student's shape. A run that fails before its first checkpoint leaves no
    trace: no checkpoints/ (whose settings file would make the folder look like a run to resume) and no
    output folder it created. The student is saved beside the output and swapped in last, with its record.
    """
    from accelerate import PartialState

    output = Path(settings.output)
    state = PartialState()
    # before the Trainer sets up torch.distributed, PartialState sees one process per rank: ask torchrun's RANK
    main = state.is_main_process and os.environ.get("RANK", "0") == "0"
    created = not output.exists()
    resume_from = _plan_output(output, settings)  # refuses a bad --output before the slow loading
    inputs = _load_inputs(settings)
    claim = None
    with state.main_process_first():  # under torchrun, rank 0 prepares the folder before the others look
        if main:
            claim = _claim_output(output, resume_from, created)
    try:
        return _train(settings, inputs, resume_from, callbacks)
    except BaseException:
        if main and resume_from is None:
            _clean_failed_start(output, created)
        raise
    finally:
        if claim is not None:
            os.close(claim)


def _load_inputs(settings: DistillSettings):
    """(teacher, tokenizer, texts), each refused with a one-line error before any folder is touched."""
    from transformers import AutoTokenizer

    from compressors.text_data import load_texts

    teacher = load_teacher(settings.teacher)
    teacher_depth = teacher.config.num_hidden_layers
    settings.student_plan(teacher_depth, [0.0] * teacher_depth)  # refuse a bad student shape before any work
    tokenizer = AutoTokenizer.from_pretrained(_teacher_source(settings.teacher))
    texts = load_texts(settings.data, limit=settings.data_limit, fraction=settings.data_fraction, seed=settings.seed)
    return teacher, tokenizer, texts


def _train(settings: DistillSettings, inputs, resume_from: str | None, callbacks=None) -> dict:
    from transformers import TrainingArguments, default_data_collator

    from compressors.text_data import pack_blocks

    output = Path(settings.output)
    checkpoints = output / CHECKPOINTS
    weights = settings.loss_weights()
    teacher, tokenizer, texts = inputs
    teacher_depth = teacher.config.num_hidden_layers
    influence = influence_record(teacher, tokenizer, texts, settings) if settings.layers == AUTO else None
    layers, init = settings.student_plan(teacher_depth, influence and influence["scores"])
    blocks = pack_blocks(texts, tokenizer, settings.block_size)
    n_eval = min(settings.eval_blocks, len(blocks) // 10)  # held out from the end; never most of the data
    train_blocks, eval_blocks = blocks[: len(blocks) - n_eval], blocks[len(blocks) - n_eval:]
    student = make_student(teacher, layers, init, settings.seed)
    print(f"distil: teacher {settings.teacher} ({teacher.config.num_hidden_layers} blocks) -> student of "
          f"{len(layers)} blocks {layers} ({init} init); {len(train_blocks)} training blocks of "
          f"{settings.block_size} tokens" + (f", resuming from {resume_from}" if resume_from else ""), file=sys.stderr)

    args = TrainingArguments(
        output_dir=str(checkpoints), seed=settings.seed, max_steps=settings.max_steps,
        num_train_epochs=settings.epochs, per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum, learning_rate=settings.learning_rate,
        warmup_steps=settings.warmup, weight_decay=settings.weight_decay, max_grad_norm=settings.max_grad_norm,
        save_strategy="steps", save_steps=settings.save_steps,
        save_total_limit=None if settings.keep_checkpoints else 2,  # --keep-checkpoints: a training-time series
        logging_steps=settings.logging_steps, report_to="none", bf16=settings.bf16, optim="adamw_torch",
        ddp_find_unused_parameters=False,  # every student weight is in the loss
    )
    trainer = DistillationTrainer(
        model=student, args=args, teacher=teacher, loss_weights=weights, train_dataset=PackedBlocks(train_blocks),
        data_collator=default_data_collator, processing_class=tokenizer,
        callbacks=([RecordSettings(checkpoints / SETTINGS_FILE, settings.for_resume())]
                   + ([] if settings.keep_checkpoints else [SkipFinalCheckpoint()]) + list(callbacks or [])),
    )
    trainer.train(resume_from_checkpoint=resume_from)

    from compressors.checks import check_compressed
    from compressors.verify import refuse_unchanged

    refuse_unchanged("compfair compress distill", steps=trainer.state.global_step,
                     fix="give more training text, or a positive --epochs / --max-steps")

    check_compressed(trainer.model, tokenizer)  # cached vs uncached logits; raises before anything is saved
    from compressors.output import Staging, partial_path, target_folder

    staging = None
    with trainer.accelerator.main_process_first():  # rank 0 makes the folder beside the output all ranks save into
        if trainer.is_world_process_zero():
            staging = Staging(target_folder(output), WRITER, tag="student")
    try:
        trainer.save_model(str(partial_path(target_folder(output), "student")))  # every process takes part
        if not trainer.is_world_process_zero():
            return None
        staged = staging.folder
        (staged / "training_args.bin").unlink(missing_ok=True)  # a pickle of this run's arguments, not the model's
        record = _write_record(staged, settings, trainer, layers, init, teacher_depth, len(train_blocks),
                               influence, eval_blocks if n_eval else None, weights)
        if settings.keep_checkpoints:
            checkpoints.rename(staged / CHECKPOINTS)
        try:
            staging.publish(overwrite=True, given=str(output), also_ours=(CHECKPOINTS,))
        except BaseException:
            if settings.keep_checkpoints:
                (staged / CHECKPOINTS).rename(checkpoints)
            raise
        return record
    finally:
        if staging is not None:
            staging.close()


def _write_record(staged, settings, trainer, layers, init, teacher_depth, train_blocks, influence, eval_blocks,
                  weights) -> dict:
    from compressors.metadata import write_compression_metadata

    return write_compression_metadata(
        staged, method=METHOD, source_model=settings.teacher, seed=settings.seed, model=trainer.model,
        settings={
            "teacher_path": _teacher_source(settings.teacher), "preset": settings.preset, "layers": layers,
            "num_layers": len(layers), "teacher_layers": teacher_depth, "init": init,
            "layer_selection": _layer_selection(settings),
            "loss": dataclasses.asdict(weights), "data": settings.data or "bold_wiki",
            "data_limit": settings.data_limit, "data_fraction": settings.data_fraction,
            "block_size": settings.block_size, "train_blocks": train_blocks, "batch_size": settings.batch_size,
            "grad_accum": settings.grad_accum, "learning_rate": settings.learning_rate,
            "steps": trainer.state.global_step, "max_steps": settings.max_steps, "epochs": settings.epochs,
        },
        removed={"layers": [i for i in range(teacher_depth) if i not in layers]},
        extra={
            "train_losses": _last_logged_losses(trainer.state.log_history),
            "heldout_losses": evaluate(trainer.model, trainer.teacher, eval_blocks, weights)
                               if eval_blocks is not None else {},
            "heldout_blocks": 0 if eval_blocks is None else len(eval_blocks),
            **({"block_influence": influence} if influence else {}),
        },
    )


def _layer_selection(settings: DistillSettings) -> str:
    if settings.layers == AUTO:
        return "auto: highest block influence"
    return "explicit" if settings.layers is not None else "evenly spaced"


def _plan_output(output: Path, settings: DistillSettings) -> str | None:
    """Checkpoint to resume from (same settings), None for a fresh run; checks only, writes nothing.

    The output folder check is compressors.output's (never the teacher's folder; never a folder holding
    files compfair did not write, checkpoints/ included; a finished model only with --overwrite); a run
    of ours with a complete checkpoint resumes instead.
    """
    from compressors.output import prepare_output, read_marker

    checkpoints = output / CHECKPOINTS
    settings_file = checkpoints / SETTINGS_FILE
    resume_from = None
    if not settings.overwrite and settings_file.is_file():
        resume_from = last_complete_checkpoint(checkpoints)
    marker = read_marker(output) or {}
    own_run = marker.get("writer") == WRITER and not marker.get("complete")  # killed before its first checkpoint
    prepare_output(output, sources=[_teacher_source(settings.teacher)], overwrite=settings.overwrite,
                   resuming=resume_from is not None or own_run)
    if resume_from is None:
        return None
    saved = json.loads(settings_file.read_text())
    changed = sorted(k for k in set(saved) | set(settings.for_resume()) if saved.get(k) != settings.for_resume().get(k))
    if changed:
        raise DistillError(f"{checkpoints} holds a run with other settings ({', '.join(changed)}): rerun with "
                           "the same options to resume it, pass --overwrite to start over, or use another --output")
    return resume_from


def _claim_output(output: Path, resume_from: str | None, created: bool) -> int:
    """Lock the output folder for this run (a second run to it stops), then mark it and its checkpoints/ as
    this run's (after _plan_output proved them ours). Returns the lock's file descriptor, to close at the end."""
    from compressors.output import OutputFolderError, mark_unfinished

    output.mkdir(parents=True, exist_ok=True)
    claim = os.open(output, os.O_RDONLY)
    try:
        fcntl.flock(claim, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(claim)
        if created:
            output.rmdir()
        raise OutputFolderError(f"--output {output}: another compfair distill run is writing there now; wait for "
                                "it to finish, or choose another --output") from None
    checkpoints = output / CHECKPOINTS
    if resume_from is None and checkpoints.exists():
        shutil.rmtree(checkpoints)  # --overwrite, or leftovers of a killed start (proven compfair's by the plan)
    if not output.is_dir() or not any(output.iterdir()):
        mark_unfinished(output, WRITER)
    mark_unfinished(checkpoints, WRITER)
    return claim


def _clean_failed_start(output: Path, created: bool) -> None:
    """After a failure before the first complete checkpoint: drop checkpoints/ and the folder if we made it empty."""
    from compressors.output import MARKER, read_marker

    checkpoints = output / CHECKPOINTS
    if checkpoints.is_dir() and last_complete_checkpoint(checkpoints) is None:
        shutil.rmtree(checkpoints, ignore_errors=True)
    marker = read_marker(output)
    if marker and not marker.get("complete") and [p.name for p in output.iterdir()] == [MARKER]:
        (output / MARKER).unlink()
    if created and output.is_dir() and not any(output.iterdir()):
        output.rmdir()


class RecordSettings(TrainerCallback):
    """Writes the run's settings beside its checkpoints when training begins (a resume compares against them)."""

    def __init__(self, path: Path, settings: dict):
        self.path, self.settings = path, settings

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.settings, indent=2))


def last_complete_checkpoint(folder: Path) -> str | None:
    """Newest checkpoint-N whose trainer_state.json (written last) is whole; a run killed mid-save skips it."""
    found = []
    for path in folder.glob("checkpoint-*"):
        try:
            json.loads((path / "trainer_state.json").read_text())
            found.append((int(path.name.split("-")[1]), path))
        except (OSError, ValueError, IndexError):
            continue
    return str(max(found)[1]) if found else None


def _last_logged_losses(history: list[dict]) -> dict:
    for entry in reversed(history):
        if "loss" in entry:
            return {k: entry[k] for k in ("loss", "kl", "clm", "cos", "step") if k in entry}
    final = next((e for e in reversed(history) if "train_loss" in e), {})
    return {"loss": final["train_loss"], "step": final.get("step")} if final else {}


# ---------------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    from compressors.text_data import MAX_BLOCK_TOKENS

    defaults = DistillSettings(output="")
    parser = argparse.ArgumentParser(
        prog="compfair compress distill", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Distil a GPT-2/Llama-family teacher into a shallower student (DistilGPT2 recipe) with the HF "
                    "Trainer. Rerunning the same command after a kill resumes from the last checkpoint. "
                    "Paper recipe: --teacher gpt2 --data Skylion007/openwebtext --data-fraction 0.01.",
    )
    add = parser.add_argument
    add("--teacher", default=defaults.teacher, help="hub id, local folder, or embedded model name")
    add("--output", required=True, help="folder for the student checkpoint (and checkpoints/ while training)")
    shape = parser.add_argument_group("student")
    shape.add_argument("--preset", type=options.checked(canonical_preset), metavar="{A,B,B¬,C,D,D¬}", help="paper student: A (4 blocks), B (6), B¬ (6, random init; also Bnot/B-), C (8), "
                                        "D (10), D¬ (10, random); counts are for a 12-block teacher and scale with "
                                        "depth (B if no --preset/--num-layers/--layers)")
    shape.add_argument("--num-layers", type=options.positive_int, help="student blocks, evenly spaced teacher blocks (overrides preset)")
    shape.add_argument("--layers", type=options.checked(parse_layer_list),
                       help="teacher blocks to copy, e.g. 0,2,4,7,9,11, or 'auto': keep the --num-layers blocks "
                            "(default: the preset's number) whose output differs most from their input, i.e. drop "
                            "the lowest Block Influence 1 - cos(h_in, h_out) on calibration texts (ShortGPT)")
    shape.add_argument("--calibration-texts", type=options.positive_int, default=defaults.calibration_texts,
                       help="--layers auto: training texts (seeded sample) that block influence is averaged over")
    shape.add_argument("--calibration-tokens", type=options.int_range(2), default=defaults.calibration_tokens,
                       help="--layers auto: at most this many tokens of each calibration text")
    shape.add_argument("--init", choices=("teacher", "random"), help="initialise from teacher blocks or at random "
                                                                     "(overrides the preset)")
    data = parser.add_argument_group("data")
    data.add_argument("--data", help="hub dataset id[:config], .txt/.jsonl file or folder; default: shipped BOLD "
                                     "Wikipedia sentences")
    data.add_argument("--data-limit", type=options.positive_int, help="use the first N texts")
    data.add_argument("--data-fraction", type=options.float_range(0, 1, low_open=True),
                      help="use a seeded random fraction (0, 1] of the texts (paper: 0.01)")
    data.add_argument("--block-size", type=options.int_range(2, MAX_BLOCK_TOKENS), default=defaults.block_size, help="tokens per training block")
    data.add_argument("--eval-blocks", type=options.nonnegative_int, default=defaults.eval_blocks,
                      help="blocks held out to report final losses (at most a tenth of the data; 0 = none)")
    train = parser.add_argument_group("training")
    train.add_argument("--max-steps", type=options.positive_int, default=defaults.max_steps,
                       help="optimizer steps (overrides --epochs; -1: --epochs decides)")
    train.add_argument("--epochs", type=options.positive_float, default=defaults.epochs, help="passes over the data")
    train.add_argument("--batch-size", type=options.positive_int, default=defaults.batch_size, help="blocks per device per micro-batch")
    train.add_argument("--grad-accum", type=options.positive_int, default=defaults.grad_accum, help="micro-batches per optimizer step")
    train.add_argument("--lr", dest="learning_rate", type=options.positive_float, default=defaults.learning_rate,
                       help="peak AdamW learning rate, linear decay")
    train.add_argument("--warmup", type=options.nonnegative_float, default=defaults.warmup, help="warm-up steps, or a fraction if < 1")
    train.add_argument("--weight-decay", type=options.nonnegative_float, default=defaults.weight_decay, help="AdamW weight decay")
    train.add_argument("--max-grad-norm", type=options.nonnegative_float, default=defaults.max_grad_norm, help="clip gradients (0 = off)")
    train.add_argument("--save-steps", type=options.positive_int, default=defaults.save_steps, help="checkpoint every N steps")
    train.add_argument("--logging-steps", type=options.positive_int, default=defaults.logging_steps, help="log losses every N steps")
    train.add_argument("--seed", type=options.seed, default=defaults.seed, help="random init, data sample and order, dropout")
    train.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision")
    train.add_argument("--keep-checkpoints", action="store_true", help="keep checkpoints/ after a finished run")
    train.add_argument("--overwrite", action="store_true", help="discard earlier checkpoints/results in --output")
    loss = parser.add_argument_group("loss (defaults: DistilGPT2)")
    loss.add_argument("--temperature", type=options.positive_float, default=defaults.temperature, help="softmax temperature T")
    loss.add_argument("--alpha-ce", type=options.nonnegative_float, default=defaults.alpha_ce, help="weight of the soft-target KL")
    loss.add_argument("--alpha-clm", type=options.nonnegative_float, default=defaults.alpha_clm, help="weight of the LM loss")
    loss.add_argument("--alpha-cos", type=options.nonnegative_float, default=defaults.alpha_cos, help="weight of the hidden-state cosine")
    return parser


def check_settings(settings: DistillSettings) -> None:
    """Refuse a bad student shape, block size or loss from the teacher's config alone, before anything loads."""
    from compfair_tasks.models import load_model_config
    from compressors.text_data import check_context

    config = load_model_config(settings.teacher, "--teacher")
    depth = getattr(config, "num_hidden_layers", None)
    if depth:
        settings.student_plan(depth, [0.0] * depth)
    check_context(settings.block_size, config)
    settings.loss_weights()


def main(argv: list[str] | None = None) -> int:
    from compfair_tasks.models import ModelNotAvailableError

    parser = build_parser()
    settings = DistillSettings(**vars(parser.parse_args(argv)))
    try:
        if settings.preset:
            settings.preset = canonical_preset(settings.preset)
        check_settings(settings)
        record = distill(settings)
    except (ValueError, FileNotFoundError, ModelNotAvailableError) as error:  # DistillError, data/model not found
        print(f"compfair compress distill: error: {error}", file=sys.stderr)
        return 2
    if record:
        losses = record.get("heldout_losses") or record.get("train_losses")
        print(f"student saved to {settings.output}: {record['params']:,} parameters, "
              f"{record['settings']['num_layers']} blocks; final losses {losses}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
