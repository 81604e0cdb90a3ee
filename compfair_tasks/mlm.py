"""`lm_eval --model compfair-mlm`: masked language models (BERT, RoBERTa, DistilBERT, ALBERT, ...) and any encoder.

lm-eval's request types assume a left-to-right model, so a masked LM answers them under documented rules
(compfair's start-up hook registers this class; `--model hf` refuses encoders and this type refuses causal
models, each naming the other):

- `loglikelihood(context, continuation)`: the pseudo-log-likelihood of the continuation after the context
  (Salazar et al. 2020: each continuation token masked in turn, the whole text visible, log-probabilities
  summed). Any lm-eval loglikelihood or multiple-choice task runs under this rule.
- A *query*: a request whose context is `QUERY` and whose continuation is a JSON object
  `{"rule": ..., ...}` is answered with that published masked-LM rule's score (`mlm_rules.py`: StereoSet
  intrasentence, CrowS-Pairs by Nangia et al. or by Bias Bench, PLL with sum or mean). compfair's `_mlm` task
  variants send these: the rule needs more than (context, continuation) (the blank's position, the paired
  sentence), and a task's docs are the place that knows it. The score comes back as the request's
  "log-likelihood" (the StereoSet rule's is a mean probability); `is_greedy` is always False.
- `loglikelihood_rolling(text)`: the PLL of the whole text.
- `generate_until(context)`: only for an *embedding query* `QUERY + {"embed": [sentences], "pooling": ...}`,
  answered with the sentence embeddings as text (JSON: shape and base64 float32, exact): the one request type
  that returns more than a number. `compfair_seat` uses it; a masked LM generates no text otherwise.

Embeddings are the encoder's last hidden state pooled over the sentence's tokens: `mean` (all tokens, special
ones included, as Bias Bench's SEAT code) or `cls` (the first token). They need no MLM head, so any encoder
(e.g. all-MiniLM-L6-v2) runs SEAT; a checkpoint without an MLM head refuses the scoring rules.
A folder holding `compfair_quantized.safetensors` (`compfair compress quantize --method dynamic-int8`) is
loaded with `compressors.quantize.load_quantized`, imported by name (the one exception to the
compfair_tasks <- compressors direction, as for the hook's pruned model classes).
"""

from __future__ import annotations

import base64
import importlib
import json
import logging
from pathlib import Path

import numpy as np
import torch

from compfair_tasks import mlm_rules
from compfair_tasks.errors import CompfairError
from compfair_tasks.models import QUANTIZED_FILES, ModelNotAvailableError, is_encoder_config, resolve_model

log = logging.getLogger(__name__)

MODEL_TYPE = "compfair-mlm"
QUERY = "compfair-mlm-query:"
POOLINGS = ("mean", "cls")


class MaskedLMError(CompfairError, ValueError):
    """A model or request the masked-LM model type cannot score."""


def query(payload: dict) -> str:
    return QUERY + json.dumps(payload, ensure_ascii=False, sort_keys=True)


def parse_query(text: str) -> dict | None:
    return json.loads(text[len(QUERY):]) if text.startswith(QUERY) else None


def encode_embeddings(array: np.ndarray) -> str:
    array = np.ascontiguousarray(array, dtype=np.float32)
    return json.dumps({"shape": list(array.shape), "float32": base64.b64encode(array.tobytes()).decode("ascii")})


def decode_embeddings(text: str) -> np.ndarray:
    try:
        payload = json.loads(text)
        return np.frombuffer(base64.b64decode(payload["float32"]), dtype=np.float32).reshape(payload["shape"])
    except (ValueError, KeyError, TypeError):
        raise MaskedLMError(f"the model returned text, not sentence embeddings ({text[:60]!r}...): run compfair_seat "
                            f"with `lm_eval --model {MODEL_TYPE}`") from None


def is_quantized_folder(pretrained) -> bool:
    folder = Path(str(pretrained)).expanduser()
    return folder.is_dir() and any((folder / name).is_file() for name in QUANTIZED_FILES)


def load_encoder(pretrained: str, revision: str | None = None, trust_remote_code: bool = False, tokenizer=None):
    """(model, tokenizer, has_mlm_head) of an encoder checkpoint folder, hub id or compfair int8 folder."""
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoTokenizer

    role = "--model_args pretrained="
    quantized = is_quantized_folder(pretrained)
    source = str(Path(str(pretrained)).expanduser()) if quantized else resolve_model(str(pretrained), role)
    kwargs = {"revision": revision} if revision and not quantized else {}
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError) as error:
        raise ModelNotAvailableError(f"{role}{pretrained}: cannot load its config ({str(error).splitlines()[0][:160]}); "
                                     "give a checkpoint folder or a reachable hub id") from error
    if not is_encoder_config(config):
        raise MaskedLMError(f"{role}{pretrained} is not an encoder-only masked LM (model_type "
                            f"{getattr(config, 'model_type', None)!r}): evaluate causal and seq2seq models with "
                            "`lm_eval --model hf`")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer or source, trust_remote_code=trust_remote_code,
                                              **({} if tokenizer else kwargs))
    if quantized:
        model = importlib.import_module("compressors.quantize").load_quantized(source)
        return model.eval(), tokenizer, model.get_output_embeddings() is not None
    model, info = AutoModelForMaskedLM.from_pretrained(source, output_loading_info=True, dtype=torch.float32,
                                                       trust_remote_code=trust_remote_code, **kwargs)
    head_missing = [k for k in info.get("missing_keys", []) if k not in (getattr(model, "all_tied_weights_keys", None) or {})]
    if head_missing:  # a sentence encoder (no MLM head): keep the bare encoder, never a random head
        log.warning("%s has no masked-LM head (missing %s): it runs compfair_seat (embeddings) only",
                    pretrained, ", ".join(sorted(head_missing)[:3]))
        model = AutoModel.from_pretrained(source, dtype=torch.float32, trust_remote_code=trust_remote_code, **kwargs)
        return model.eval(), tokenizer, False
    return model.eval(), tokenizer, True


# compfair's causal preference tasks score causal log-likelihoods: under a masked LM they would give PLL numbers
# under the causal task's name. Each has an `_mlm` twin that sends the published masked-LM rule instead.
MLM_TWINS = {
    "compfair_stereoset": "compfair_stereoset_intrasentence_mlm,compfair_stereoset_intersentence_mlm",
    "compfair_stereoset_intrasentence": "compfair_stereoset_intrasentence_mlm",
    "compfair_stereoset_intersentence": "compfair_stereoset_intersentence_mlm",
    "compfair_crows_pairs": "compfair_crows_pairs_mlm",
    "compfair_winobias": "compfair_winobias_mlm",
    "compfair_winobias_type1": "compfair_winobias_mlm",
    "compfair_winobias_type2": "compfair_winobias_mlm",
}


def refuse_causal_tasks(requests) -> None:
    """Stop before scoring when a request comes from a compfair task written for causal LMs (names its twin)."""
    causal = sorted({name for name in (getattr(request, "task_name", None) for request in requests) if name in MLM_TWINS})
    if causal:
        raise MaskedLMError(f"{', '.join(causal)} score causal log-likelihoods; with --model {MODEL_TYPE} run "
                            f"--tasks {','.join(MLM_TWINS[name] for name in causal)} (the published masked-LM rules)")


def _lm_base():
    from lm_eval.api.model import LM

    return LM


class MaskedLMScorer(_lm_base()):
    """lm-eval model type for encoders; see the module docstring for what each request type means."""

    def __init__(self, pretrained: str, revision: str | None = None, device: str = "cpu", batch_size=16,
                 max_batch_size=None, trust_remote_code=False, max_length: int | None = None, **kwargs):
        super().__init__()
        unknown = sorted(set(kwargs) - {"dtype", "tokenizer", "seat_pooling"})  # seat_pooling: read by compfair_seat
        if unknown:
            raise MaskedLMError(f"{MODEL_TYPE} does not take --model_args {', '.join(unknown)}; it takes pretrained, "
                                "revision, tokenizer, device, batch_size, trust_remote_code, max_length")
        if str(kwargs.get("dtype", "float32")) not in ("float32", "auto", "torch.float32"):
            raise MaskedLMError(f"{MODEL_TYPE} runs in float32 (dtype={kwargs['dtype']} is not supported); drop dtype")
        trust = str(trust_remote_code).lower() in ("1", "true", "yes")
        self.model, self.tokenizer, self.has_mlm_head = load_encoder(pretrained, revision, trust, kwargs.get("tokenizer"))
        self.quantized = is_quantized_folder(pretrained)
        device = str(device or "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():  # lm_eval's default device is cuda
            log.info("%s: CUDA is not available, running on the CPU", MODEL_TYPE)
            device = "cpu"
        self._device = torch.device(device)
        self.model.to(self._device)
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 16
        if self.quantized and self.batch_size != 1:
            # dynamic int8 scales activations per call, so a batch's other rows (and padding) change each row's
            # result; one input per call is deterministic and is what Bias Bench runs (batch size 1)
            log.info("%s: int8 checkpoint, batch size 1 (dynamic activation scales depend on the batch)", MODEL_TYPE)
            self.batch_size = 1
        self.max_length = int(max_length) if max_length else getattr(self.tokenizer, "model_max_length", 512)
        self.pretrained = pretrained

    # --- running masked inputs -------------------------------------------------------------------

    def _forward(self, batch: list[tuple[int, ...]]) -> torch.Tensor:
        width = max(len(ids) for ids in batch)
        pad = self.tokenizer.pad_token_id or 0
        input_ids = torch.tensor([list(ids) + [pad] * (width - len(ids)) for ids in batch], device=self._device)
        attention = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in batch], device=self._device)
        with torch.inference_mode():
            return self.model(input_ids=input_ids, attention_mask=attention).logits

    def run_jobs(self, jobs: list[mlm_rules.Job]) -> dict[mlm_rules.Job, float]:
        """Log-probability of each job's target at its masked position; each distinct input runs once."""
        if jobs and not self.has_mlm_head:
            raise MaskedLMError(f"{self.pretrained} has no masked-LM head, so it cannot score sentences; it runs "
                                "compfair_seat only (give a *ForMaskedLM checkpoint for the other tasks)")
        by_input: dict[tuple[int, ...], set[tuple[int, int]]] = {}
        for job in jobs:
            by_input.setdefault(job.ids, set()).add((job.position, job.target))
        inputs = sorted(by_input, key=len)
        too_long = [ids for ids in inputs if len(ids) > self.max_length]
        if too_long:
            raise MaskedLMError(f"an input of {len(too_long[0])} tokens exceeds the model's {self.max_length}")
        out: dict[tuple, float] = {}
        from tqdm import tqdm

        for start in tqdm(range(0, len(inputs), self.batch_size), desc=f"{MODEL_TYPE} masked inputs",
                          disable=len(inputs) <= self.batch_size):
            batch = inputs[start:start + self.batch_size]
            wanted = [(row, position, target) for row, ids in enumerate(batch) for position, target in by_input[ids]]
            rows, positions, targets = (torch.tensor(column) for column in zip(*wanted))
            logits = self._forward(batch)[rows, positions].float()  # the masked positions only
            log_probs = torch.log_softmax(logits, dim=-1)[torch.arange(len(wanted)), targets].tolist()
            for (row, position, target), log_prob in zip(wanted, log_probs):
                out[(batch[row], position, target)] = log_prob
        return {job: out[(job.ids, job.position, job.target)] for job in jobs}

    def _scores(self, plans: list[mlm_rules.Plan]) -> list[float]:
        results = self.run_jobs([job for plan in plans for job in plan.jobs])
        return [plan.finish([results[job] for job in plan.jobs]) for plan in plans]

    # --- lm-eval request types -------------------------------------------------------------------

    def _plan(self, context: str, continuation: str) -> mlm_rules.Plan:
        payload = parse_query(context + continuation) if context == QUERY else None
        try:
            if payload is not None:
                return mlm_rules.plan(self.tokenizer, payload)
            return mlm_rules.pll(self.tokenizer, context, continuation)
        except (ValueError, TypeError) as error:
            raise MaskedLMError(f"{MODEL_TYPE}: cannot score {continuation[:80]!r}: {error}") from None

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        refuse_causal_tasks(requests)
        scores = self._scores([self._plan(*request.args) for request in requests])
        return [(score, False) for score in scores]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        refuse_causal_tasks(requests)
        return self._scores([self._plan("", request.args[0]) for request in requests])

    def embed(self, sentences: list[str], pooling: str = "mean") -> np.ndarray:
        """One vector per sentence: the last hidden state pooled over its tokens (see the module docstring)."""
        if pooling not in POOLINGS:
            raise MaskedLMError(f"seat_pooling={pooling!r} is not a pooling; use one of {', '.join(POOLINGS)}")
        encoder = self.model.base_model
        vectors = []
        for start in range(0, len(sentences), self.batch_size):
            batch = self.tokenizer(sentences[start:start + self.batch_size], padding=True, return_tensors="pt")
            batch = {k: v.to(self._device) for k, v in batch.items()}
            with torch.inference_mode():
                hidden = encoder(**batch).last_hidden_state.float()
            if pooling == "cls":
                vectors.append(hidden[:, 0])
            else:
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                vectors.append((hidden * mask).sum(1) / mask.sum(1))
        return torch.cat(vectors).cpu().numpy()

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for request in requests:
            payload = parse_query(request.args[0])
            if payload is None or "embed" not in payload:
                raise MaskedLMError(f"{MODEL_TYPE} does not generate text (a masked LM has no next-token "
                                    "distribution); run generation tasks with `--model hf` on a causal model")
            out.append(encode_embeddings(self.embed(payload["embed"], payload.get("pooling", "mean"))))
        return out
