"""GPT-2 with a different number of attention heads in each layer (what head pruning leaves behind).

`config.heads_per_layer[i]` is the number of real heads layer i keeps (the logical layout, which
importance scoring and parameter counts see); `head_dim` stays that of the unpruned model
(n_embd // n_head). The classes override `__init__` only: transformers' own GPT-2 attention forward
infers the head count from tensor shapes (`view(..., -1, head_dim)`), so resized `c_attn` (q, k, v
blocks of heads * head_dim columns) and `c_proj` (heads * head_dim rows) are all it needs.
A layer with no real heads left holds one placeholder head with zero weights and zero biases (the
stock code cannot take zero heads); its attention output is then exactly `c_proj`'s bias, as a
fully gated layer's is. `physical_heads` is the one place that maps the logical to the stored layout.

This file imports only torch and transformers: `save_pretrained` copies it next to the weights
(auto_map in config.json), so `trust_remote_code=True` loads a pruned checkpoint where compfair is
not installed. With compfair installed, its startup hook registers the classes with AutoConfig and
AutoModelForCausalLM, and no flag is needed.
"""

from __future__ import annotations

import torch
from transformers.models.gpt2.configuration_gpt2 import GPT2Config
from transformers.models.gpt2.modeling_gpt2 import GPT2Attention, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

# 1: compfair < 0.3, own attention forward (broken by transformers 5.24); 2: stock forward, placeholder heads
FORMAT_VERSION = 2
RESAVE_HINT = ("re-save it with this compfair: run `compfair compress prune` on the unpruned model again "
               "(the old format replaced transformers' attention forward, which gives wrong KV-cache "
               "generations on newer transformers)")


def check_format_version(config, version) -> None:
    """Refuse a pruned checkpoint written in another format (missing/1: the old overridden forward)."""
    if version != FORMAT_VERSION:
        name = getattr(config, "_name_or_path", "") or "this pruned checkpoint"
        raise ValueError(f"{name} has compfair pruned-model format {version or 1}, this compfair reads format "
                         f"{FORMAT_VERSION}: {RESAVE_HINT}")


class PrunedGPT2Config(GPT2Config):
    """GPT-2 whose layer i keeps `heads_per_layer[i]` heads of the unpruned head_dim (n_embd // n_head)."""

    model_type = "pruned_gpt2"

    def __init__(self, heads_per_layer: list[int] | None = None, compfair_format_version: int | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.compfair_format_version = compfair_format_version
        if heads_per_layer is not None:  # a real pruned layout (not transformers' default-config probe)
            check_format_version(self, compfair_format_version)
        self.heads_per_layer = list(heads_per_layer) if heads_per_layer is not None else [self.n_head] * self.n_layer
        if len(self.heads_per_layer) != self.n_layer:
            raise ValueError(f"heads_per_layer has {len(self.heads_per_layer)} entries for {self.n_layer} layers")


def physical_heads(real_heads: int) -> int:
    """Heads stored for a layer with `real_heads` real ones: the same, or one zero placeholder if none."""
    return max(real_heads, 1)


class PrunedGPT2Attention(GPT2Attention):
    """GPT-2 self-attention sized for `config.heads_per_layer[layer_idx]` heads of the original head_dim."""

    def __init__(self, config: PrunedGPT2Config, layer_idx: int):
        super().__init__(config, is_cross_attention=False, layer_idx=layer_idx)
        self.num_heads = physical_heads(config.heads_per_layer[layer_idx])
        self.split_size = self.num_heads * self.head_dim
        self.c_attn = Conv1D(3 * self.split_size, self.embed_dim)
        self.c_proj = Conv1D(self.embed_dim, self.split_size)


class PrunedGPT2LMHeadModel(GPT2LMHeadModel):
    config_class = PrunedGPT2Config
    config: PrunedGPT2Config

    def __init__(self, config: PrunedGPT2Config):
        super().__init__(config)
        for index, block in enumerate(self.transformer.h):
            block.attn = PrunedGPT2Attention(config, layer_idx=index)
        self.post_init()

    def placeholder_parameter_count(self) -> int:
        """Parameters of the zero placeholder heads (not part of the pruned model proper)."""
        embed, head_dim = self.config.n_embd, self.config.n_embd // self.config.n_head
        per_head = 3 * (embed * head_dim + head_dim) + head_dim * embed  # c_attn columns + bias, c_proj rows
        return sum(physical_heads(n) - n for n in self.config.heads_per_layer) * per_head


def register_model_class():
    """Register the pruned-GPT-2 config and model with AutoConfig and AutoModelForCausalLM (public API)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    AutoConfig.register(PrunedGPT2Config.model_type, PrunedGPT2Config, exist_ok=True)
    AutoModelForCausalLM.register(PrunedGPT2Config, PrunedGPT2LMHeadModel, exist_ok=True)


def keep_heads(model: GPT2LMHeadModel, keep: list[list[int]]) -> PrunedGPT2LMHeadModel:
    """A new PrunedGPT2LMHeadModel holding only heads `keep[i]` (indices into layer i's current real heads)."""
    config = PrunedGPT2Config(heads_per_layer=[len(k) for k in keep], compfair_format_version=FORMAT_VERSION,
                              **_plain_config_dict(model.config))
    head_dim = model.config.n_embd // model.config.n_head
    state = model.state_dict()
    for index, (block, kept) in enumerate(zip(model.transformer.h, keep)):
        width = block.attn.split_size  # stored heads * head_dim of the source (real heads come first)
        columns = _head_slices(kept, head_dim)  # an empty layer: -1 = the zero placeholder head
        prefix = f"transformer.h.{index}.attn."
        state[prefix + "c_attn.weight"] = _take(state[prefix + "c_attn.weight"], 1, columns, width, parts=3)
        state[prefix + "c_attn.bias"] = _take(state[prefix + "c_attn.bias"], 0, columns, width, parts=3)
        state[prefix + "c_proj.weight"] = _take(state[prefix + "c_proj.weight"], 0, columns, width)
    pruned = PrunedGPT2LMHeadModel(config).to(model.dtype)
    pruned.load_state_dict(state, strict=True)
    return pruned.eval()


def _head_slices(heads: list[int], head_dim: int) -> torch.Tensor:
    """Indices of the head_dim-wide slices of `heads` in order; no heads: one slice of -1 (zeros)."""
    if not heads:
        return torch.full((head_dim,), -1, dtype=torch.long)
    heads = torch.as_tensor(heads, dtype=torch.long).view(-1, 1)
    return (heads * head_dim + torch.arange(head_dim)).reshape(-1)


def _take(tensor: torch.Tensor, dim: int, index: torch.Tensor, width: int, parts: int = 1) -> torch.Tensor:
    """`index` of each of `parts` blocks of `width` along dim, concatenated; index -1 gives zeros."""
    blocks = []
    for part in range(parts):
        block = tensor.narrow(dim, part * width, width)
        padded = torch.cat([block, torch.zeros_like(block.narrow(dim, 0, 1))], dim)
        blocks.append(padded.index_select(dim, torch.where(index < 0, width, index)))
    return torch.cat(blocks, dim)


def _plain_config_dict(config) -> dict:
    values = config.to_dict()
    for key in ("model_type", "architectures", "auto_map", "heads_per_layer", "transformers_version",
                "compfair_format_version"):
        values.pop(key, None)
    return values


if __name__ == "compressors.pruned_gpt2":  # not when loaded as a checkpoint's remote code
    register_model_class()
