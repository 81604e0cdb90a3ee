"""GPT-2 with a different number of attention heads in each layer (what head pruning leaves behind).

`config.heads_per_layer[i]` is the number of heads layer i keeps; `head_dim` stays that of the
unpruned model (n_embd // n_head). Each attention's fused `c_attn` then has 3 * heads * head_dim
output columns (q, k, v blocks, one head_dim slice per kept head) and `c_proj` has heads * head_dim
input rows. transformers' GPT-2 attention infers the head count from tensor shapes, so only the
layer sizes change; a layer with no heads left adds just its `c_proj` bias, as a fully gated layer does.

This file imports only torch and transformers: `save_pretrained` copies it next to the weights
(auto_map in config.json), so `trust_remote_code=True` loads a pruned checkpoint where compfair is
not installed. With compfair installed, its startup hook registers the classes the first time
AutoConfig meets model_type "pruned_gpt2", and no flag is needed.
"""

from __future__ import annotations

import torch
from transformers.models.gpt2.configuration_gpt2 import GPT2Config
from transformers.models.gpt2.modeling_gpt2 import GPT2Attention, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D


class PrunedGPT2Config(GPT2Config):
    """GPT-2 whose layer i keeps `heads_per_layer[i]` heads of the unpruned head_dim (n_embd // n_head)."""

    model_type = "pruned_gpt2"

    def __init__(self, heads_per_layer: list[int] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.heads_per_layer = list(heads_per_layer) if heads_per_layer is not None else [self.n_head] * self.n_layer
        if len(self.heads_per_layer) != self.n_layer:
            raise ValueError(f"heads_per_layer has {len(self.heads_per_layer)} entries for {self.n_layer} layers")


class PrunedGPT2Attention(GPT2Attention):
    """GPT-2 self-attention with `config.heads_per_layer[layer_idx]` heads of the original head_dim."""

    def __init__(self, config: PrunedGPT2Config, layer_idx: int):
        super().__init__(config, is_cross_attention=False, layer_idx=layer_idx)
        self.num_heads = config.heads_per_layer[layer_idx]
        self.split_size = self.num_heads * self.head_dim
        self.c_attn = Conv1D(3 * self.split_size, self.embed_dim)
        self.c_proj = Conv1D(self.embed_dim, self.split_size)

    def forward(self, hidden_states, past_key_values=None, attention_mask=None, *args, **kwargs):
        if self.num_heads > 0:
            return super().forward(hidden_states, past_key_values, attention_mask, *args, **kwargs)
        if past_key_values is not None:  # later layers read the cache length from every layer
            empty = hidden_states.new_zeros(hidden_states.shape[0], 0, hidden_states.shape[1], self.head_dim)
            past_key_values.update(empty, empty, self.layer_idx)
        return self.resid_dropout(self.c_proj.bias.expand_as(hidden_states)), None  # what c_proj makes of no heads


class PrunedGPT2LMHeadModel(GPT2LMHeadModel):
    config_class = PrunedGPT2Config
    config: PrunedGPT2Config

    def __init__(self, config: PrunedGPT2Config):
        super().__init__(config)
        for index, block in enumerate(self.transformer.h):
            block.attn = PrunedGPT2Attention(config, layer_idx=index)
        self.post_init()


def register_config_class():
    """Register the pruned-GPT-2 config with transformers' AutoConfig."""
    from transformers.models.auto.configuration_auto import AutoConfig

    AutoConfig.register(PrunedGPT2Config.model_type, PrunedGPT2Config, exist_ok=True)


def register_model_class():
    """Register the pruned-GPT-2 model with AutoModelForCausalLM."""
    from transformers.models.auto.modeling_auto import AutoModelForCausalLM

    register_config_class()
    AutoModelForCausalLM.register(PrunedGPT2Config, PrunedGPT2LMHeadModel, exist_ok=True)


def keep_heads(model: GPT2LMHeadModel, keep: list[list[int]]) -> PrunedGPT2LMHeadModel:
    """A new PrunedGPT2LMHeadModel holding only heads `keep[i]` (indices into layer i's current heads)."""
    config = PrunedGPT2Config(heads_per_layer=[len(k) for k in keep], **_plain_config_dict(model.config))
    head_dim = model.config.n_embd // model.config.n_head
    state = model.state_dict()
    for index, (block, kept) in enumerate(zip(model.transformer.h, keep)):
        width = block.attn.split_size
        columns = _head_slices(kept, head_dim)
        qkv = torch.cat([columns + part * width for part in range(3)])
        prefix = f"transformer.h.{index}.attn."
        state[prefix + "c_attn.weight"] = state[prefix + "c_attn.weight"][:, qkv]
        state[prefix + "c_attn.bias"] = state[prefix + "c_attn.bias"][qkv]
        state[prefix + "c_proj.weight"] = state[prefix + "c_proj.weight"][columns, :]
    pruned = PrunedGPT2LMHeadModel(config).to(model.dtype)
    pruned.load_state_dict(state, strict=True)
    return pruned.eval()


def _head_slices(heads: list[int], head_dim: int) -> torch.Tensor:
    """Indices of the head_dim-wide slices of `heads`, in order."""
    heads = torch.as_tensor(heads, dtype=torch.long).view(-1, 1)
    return (heads * head_dim + torch.arange(head_dim)).reshape(-1)


def _plain_config_dict(config) -> dict:
    values = config.to_dict()
    for key in ("model_type", "architectures", "auto_map", "heads_per_layer", "transformers_version"):
        values.pop(key, None)
    return values


if __name__ == "compressors.pruned_gpt2":  # not when loaded as a checkpoint's remote code
    register_model_class()
