"""Llama-family attention with grouped key/value heads, after head pruning (e.g. SmolLM2-135M).

In grouped-query attention each key/value head serves a group of query heads (SmolLM2-135M: 9
query heads in 3 groups of 3 per layer). `config.kv_groups_per_layer[i]` lists, for each key/value
group layer i keeps, how many of its real query heads are left, e.g. [3, 1, 2]: the logical layout,
which importance scoring and parameter counts see. Pruning a query head removes its q_proj rows
and o_proj columns; a group whose last query head goes also loses its k_proj/v_proj rows.

The classes override `__init__` only. transformers' stock Llama attention infers the head counts
from tensor shapes and repeats each key/value head `num_key_value_groups` times, so every stored
key/value head must serve the same number d of query heads. `physical_layout` turns a logical
layout into an exactly equivalent stored one: each group of s query heads becomes ceil(s/d)
copies of its key/value head, its query heads padded with zero-weight heads to a multiple of d
(a zero query row with a zero o_proj column adds exactly nothing). d is chosen per layer to add the
fewest rows (d = max group: pure padding; d = 1: pure key/value duplication). A layer with no
heads left holds one zero q/k/v/o placeholder head, so its attention adds just o_proj's bias.

Only torch and transformers are imported: the file travels with a checkpoint as remote code.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.models.llama.configuration_llama import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaForCausalLM

# 1: compfair < 0.3, own attention forward (broken by transformers 5.24); 2: stock forward, stored layout
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


class PrunedLlamaConfig(LlamaConfig):
    """Llama whose layer i keeps key/value groups with `kv_groups_per_layer[i]` query heads each."""

    model_type = "pruned_llama"

    def __init__(self, kv_groups_per_layer: list[list[int]] | None = None,
                 compfair_format_version: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.compfair_format_version = compfair_format_version
        if kv_groups_per_layer is None:  # transformers' default-config probe, or an unpruned layout
            per_group = self.num_attention_heads // self.num_key_value_heads
            kv_groups_per_layer = [[per_group] * self.num_key_value_heads for _ in range(self.num_hidden_layers)]
        else:
            check_format_version(self, compfair_format_version)
        self.kv_groups_per_layer = [list(groups) for groups in kv_groups_per_layer]
        if len(self.kv_groups_per_layer) != self.num_hidden_layers:
            raise ValueError(f"kv_groups_per_layer has {len(self.kv_groups_per_layer)} entries for "
                             f"{self.num_hidden_layers} layers")


def physical_layout(groups: list[int]) -> tuple[int, list[int | None], list[int | None]]:
    """Stored layout of one layer with real query heads `groups` per key/value group.

    Returns (d, query_slots, kv_slots): every stored key/value head serves d stored query heads;
    query_slots[i] is the real query head (index in group order) stored as query head i, or None for
    a zero pad; kv_slots[j] is the real group whose key/value head is stored as key/value head j
    (None: the zero placeholder of an emptied layer).
    """
    if not groups:
        return 1, [None], [None]

    def added(d):  # zero query heads + extra key/value copies (each costs two head_dim blocks)
        return sum(math.ceil(s / d) * d - s + math.ceil(s / d) - 1 for s in groups)

    d = min(range(max(groups), 0, -1), key=added)  # ties: the larger d (a smaller KV cache)
    query_slots, kv_slots, first = [], [], 0
    for group, size in enumerate(groups):
        for copy in range(math.ceil(size / d)):
            kv_slots.append(group)
            query_slots += [first + i if i < size else None for i in range(copy * d, (copy + 1) * d)]
        first += size
    return d, query_slots, kv_slots


class PrunedLlamaAttention(LlamaAttention):
    """Llama attention sized for the stored layout of `kv_groups_per_layer[layer_idx]`."""

    def __init__(self, config: PrunedLlamaConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        d, query_slots, kv_slots = physical_layout(config.kv_groups_per_layer[layer_idx])
        self.num_key_value_groups = d  # the stock kernels repeat each key/value head d times
        hidden, width, bias = config.hidden_size, self.head_dim, config.attention_bias
        self.q_proj = nn.Linear(hidden, len(query_slots) * width, bias=bias)
        self.k_proj = nn.Linear(hidden, len(kv_slots) * width, bias=bias)
        self.v_proj = nn.Linear(hidden, len(kv_slots) * width, bias=bias)
        self.o_proj = nn.Linear(len(query_slots) * width, hidden, bias=bias)


class PrunedLlamaForCausalLM(LlamaForCausalLM):
    config_class = PrunedLlamaConfig
    config: PrunedLlamaConfig

    def __init__(self, config: PrunedLlamaConfig):
        super().__init__(config)
        for index, layer in enumerate(self.model.layers):
            layer.self_attn = PrunedLlamaAttention(config, layer_idx=index)
        self.post_init()

    def placeholder_parameter_count(self) -> int:
        """Parameters of zero query pads, key/value copies and placeholders (not real heads)."""
        head_dim, hidden = self.model.layers[0].self_attn.head_dim, self.config.hidden_size
        block = head_dim * hidden + (head_dim if self.config.attention_bias else 0)  # one head's rows of a proj
        total = 0
        for groups in self.config.kv_groups_per_layer:
            _, query_slots, kv_slots = physical_layout(groups)
            total += (len(query_slots) - sum(groups)) * (block + head_dim * hidden)  # q rows + o columns
            total += (len(kv_slots) - len(groups)) * 2 * block  # k and v rows
        return total


def register_model_class():
    """Register the pruned-Llama config and model with AutoConfig and AutoModelForCausalLM (public API)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    AutoConfig.register(PrunedLlamaConfig.model_type, PrunedLlamaConfig, exist_ok=True)
    AutoModelForCausalLM.register(PrunedLlamaConfig, PrunedLlamaForCausalLM, exist_ok=True)


def current_groups(model) -> list[list[int]]:
    """Real query heads per key/value group in each layer of a Llama or pruned-Llama model."""
    config = model.config
    if isinstance(config, PrunedLlamaConfig) or hasattr(config, "kv_groups_per_layer"):
        return [list(groups) for groups in config.kv_groups_per_layer]
    per_group = config.num_attention_heads // config.num_key_value_heads
    return [[per_group] * config.num_key_value_heads for _ in range(config.num_hidden_layers)]


def stored_query_slots(model) -> list[list[int | None]]:
    """Per layer, the real query head held by each stored query head (None: a zero pad)."""
    return [physical_layout(groups)[1] for groups in current_groups(model)]


def keep_heads(model, keep: list[list[int]]) -> PrunedLlamaForCausalLM:
    """A new PrunedLlamaForCausalLM holding only query heads `keep[i]` (indices into layer i's real heads)."""
    head_dim = model.model.layers[0].self_attn.head_dim
    state = model.state_dict()
    new_groups = []
    for index, (groups, kept) in enumerate(zip(current_groups(model), keep)):
        _, old_query, old_kv = physical_layout(groups)
        group_of_head = [g for g, size in enumerate(groups) for _ in range(size)]
        counts = [0] * len(groups)
        for head in kept:
            counts[group_of_head[head]] += 1
        kept_groups = [g for g, count in enumerate(counts) if count]
        new_groups.append([counts[g] for g in kept_groups])
        _, new_query, new_kv = physical_layout(new_groups[-1])
        kept = sorted(kept)  # real head j of the new layer is old real head kept[j]
        heads = _slices([-1 if h is None else old_query.index(kept[h]) for h in new_query], head_dim)
        kv_heads = _slices([-1 if g is None else old_kv.index(kept_groups[g]) for g in new_kv], head_dim)
        prefix = f"model.layers.{index}.self_attn."
        for name, rows in (("q_proj", heads), ("k_proj", kv_heads), ("v_proj", kv_heads)):
            for suffix in (".weight", ".bias"):
                if prefix + name + suffix in state:
                    state[prefix + name + suffix] = _take(state[prefix + name + suffix], 0, rows)
        state[prefix + "o_proj.weight"] = _take(state[prefix + "o_proj.weight"], 1, heads)
    values = model.config.to_dict()
    for key in ("model_type", "architectures", "auto_map", "kv_groups_per_layer", "transformers_version",
                "compfair_format_version"):
        values.pop(key, None)
    values["head_dim"] = head_dim
    config = PrunedLlamaConfig(kv_groups_per_layer=new_groups, compfair_format_version=FORMAT_VERSION, **values)
    pruned = PrunedLlamaForCausalLM(config).to(model.dtype)
    pruned.load_state_dict(state, strict=True)
    return pruned.eval()


def _slices(slots: list[int], head_dim: int) -> torch.Tensor:
    """Indices of the head_dim-wide slices of stored heads `slots` (-1: a zero head)."""
    slots = torch.as_tensor(slots, dtype=torch.long).view(-1, 1)
    return torch.where(slots < 0, -1, slots * head_dim + torch.arange(head_dim)).reshape(-1)


def _take(tensor: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """tensor.index_select(dim, index) where index -1 gives zeros."""
    padded = torch.cat([tensor, torch.zeros_like(tensor.narrow(dim, 0, 1))], dim)
    return padded.index_select(dim, torch.where(index < 0, tensor.shape[dim], index))


if __name__ == "compressors.pruned_llama":  # not when loaded as a checkpoint's remote code
    register_model_class()
