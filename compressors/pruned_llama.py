"""Llama-family attention with grouped key/value heads, after head pruning (e.g. SmolLM2-135M).

In grouped-query attention each key/value head serves a group of query heads (SmolLM2-135M: 9
query heads in 3 groups of 3 per layer). `config.kv_groups_per_layer[i]` lists, for each key/value
group layer i keeps, how many of its query heads are left, e.g. [3, 1, 2]. Query heads are stored
group after group, as in the unpruned model. Pruning a query head removes its q_proj rows and
o_proj columns; a group whose last query head goes also loses its k_proj/v_proj rows. Pruning
whole groups ("--unit group") keeps every layer's groups equal in size, so attention keeps using
transformers' grouped kernels; after head-level pruning, groups of unequal size are served by
indexing each query head's key/value head (the same copy repeat_kv makes).

Only torch and transformers are imported: the file travels with a checkpoint as remote code.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.llama.configuration_llama import LlamaConfig
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaForCausalLM,
    apply_rotary_pos_emb,
    eager_attention_forward,
)


class PrunedLlamaConfig(LlamaConfig):
    """Llama whose layer i keeps key/value groups with `kv_groups_per_layer[i]` query heads each."""

    model_type = "pruned_llama"

    def __init__(self, kv_groups_per_layer: list[list[int]] | None = None, **kwargs):
        super().__init__(**kwargs)
        if kv_groups_per_layer is None:
            per_group = self.num_attention_heads // self.num_key_value_heads
            kv_groups_per_layer = [[per_group] * self.num_key_value_heads for _ in range(self.num_hidden_layers)]
        self.kv_groups_per_layer = [list(groups) for groups in kv_groups_per_layer]
        if len(self.kv_groups_per_layer) != self.num_hidden_layers:
            raise ValueError(f"kv_groups_per_layer has {len(self.kv_groups_per_layer)} entries for "
                             f"{self.num_hidden_layers} layers")


class PrunedLlamaAttention(LlamaAttention):
    """Attention with `kv_groups_per_layer[layer_idx]` query heads per kept key/value head."""

    def __init__(self, config: PrunedLlamaConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        groups = config.kv_groups_per_layer[layer_idx]
        self.num_heads, self.num_key_value_heads = sum(groups), len(groups)
        hidden, width, bias = config.hidden_size, self.head_dim, config.attention_bias
        self.q_proj = nn.Linear(hidden, self.num_heads * width, bias=bias)
        self.k_proj = nn.Linear(hidden, self.num_key_value_heads * width, bias=bias)
        self.v_proj = nn.Linear(hidden, self.num_key_value_heads * width, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * width, hidden, bias=bias)
        equal = len(set(groups)) <= 1
        self.num_key_value_groups = groups[0] if groups and equal else 1
        self.kv_of_query = None if equal else [g for g, size in enumerate(groups) for _ in range(size)]

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None, **kwargs):
        input_shape = hidden_states.shape[:-1]
        if self.num_heads == 0:
            if past_key_values is not None:  # later layers read the cache length from every layer
                empty = hidden_states.new_zeros(input_shape[0], 0, input_shape[1], self.head_dim)
                past_key_values.update(empty, empty, self.layer_idx)
            return self.o_proj(hidden_states.new_zeros(*input_shape, 0)), None
        hidden_shape = (*input_shape, -1, self.head_dim)
        query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        cos, sin = position_embeddings
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx)
        if self.kv_of_query is not None:
            index = torch.tensor(self.kv_of_query, device=key.device)
            key, value = key.index_select(1, index), value.index_select(1, index)
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        output, weights = attention(self, query, key, value, attention_mask, scaling=self.scaling,
                                    dropout=self.attention_dropout if self.training else 0.0, **kwargs)
        return self.o_proj(output.reshape(*input_shape, -1).contiguous()), weights


class PrunedLlamaForCausalLM(LlamaForCausalLM):
    config_class = PrunedLlamaConfig
    config: PrunedLlamaConfig

    def __init__(self, config: PrunedLlamaConfig):
        super().__init__(config)
        for index, layer in enumerate(self.model.layers):
            layer.self_attn = PrunedLlamaAttention(config, layer_idx=index)
        self.post_init()


def register_model_class():
    """Register the pruned-Llama config and model with AutoConfig and AutoModelForCausalLM."""
    from transformers.models.auto.configuration_auto import AutoConfig
    from transformers.models.auto.modeling_auto import AutoModelForCausalLM

    AutoConfig.register(PrunedLlamaConfig.model_type, PrunedLlamaConfig, exist_ok=True)
    AutoModelForCausalLM.register(PrunedLlamaConfig, PrunedLlamaForCausalLM, exist_ok=True)


def current_groups(model) -> list[list[int]]:
    """Query heads per key/value group in each layer of a Llama or pruned-Llama model."""
    config = model.config
    if isinstance(config, PrunedLlamaConfig) or hasattr(config, "kv_groups_per_layer"):
        return [list(groups) for groups in config.kv_groups_per_layer]
    per_group = config.num_attention_heads // config.num_key_value_heads
    return [[per_group] * config.num_key_value_heads for _ in range(config.num_hidden_layers)]


def keep_heads(model, keep: list[list[int]]) -> PrunedLlamaForCausalLM:
    """A new PrunedLlamaForCausalLM holding only query heads `keep[i]` (indices into layer i's current heads)."""
    head_dim = model.model.layers[0].self_attn.head_dim
    state = model.state_dict()
    new_groups = []
    for index, (groups, kept) in enumerate(zip(current_groups(model), keep)):
        group_of_head = [g for g, size in enumerate(groups) for _ in range(size)]
        counts = [0] * len(groups)
        for head in kept:
            counts[group_of_head[head]] += 1
        kept_groups = [g for g, count in enumerate(counts) if count]
        new_groups.append([counts[g] for g in kept_groups])
        heads, kv_heads = _slices(sorted(kept), head_dim), _slices(kept_groups, head_dim)
        prefix = f"model.layers.{index}.self_attn."
        for name, rows in (("q_proj", heads), ("k_proj", kv_heads), ("v_proj", kv_heads)):
            state[prefix + name + ".weight"] = state[prefix + name + ".weight"][rows]
            if prefix + name + ".bias" in state:
                state[prefix + name + ".bias"] = state[prefix + name + ".bias"][rows]
        state[prefix + "o_proj.weight"] = state[prefix + "o_proj.weight"][:, heads]
    values = model.config.to_dict()
    for key in ("model_type", "architectures", "auto_map", "kv_groups_per_layer", "transformers_version"):
        values.pop(key, None)
    values["head_dim"] = head_dim
    pruned = PrunedLlamaForCausalLM(PrunedLlamaConfig(kv_groups_per_layer=new_groups, **values)).to(model.dtype)
    pruned.load_state_dict(state, strict=True)
    return pruned.eval()


def _slices(heads: list[int], head_dim: int) -> torch.Tensor:
    heads = torch.as_tensor(heads, dtype=torch.long).view(-1, 1)
    return (heads * head_dim + torch.arange(head_dim)).reshape(-1)


if __name__ == "compressors.pruned_llama":  # not when loaded as a checkpoint's remote code
    register_model_class()
