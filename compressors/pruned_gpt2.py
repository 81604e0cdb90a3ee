"""Config/model classes for GPT-2 checkpoints with per-layer head counts (filled in by the pruning work)."""


def register_config_class():
    """Register the pruned-GPT-2 config with transformers' AutoConfig."""


def register_model_class():
    """Register the pruned-GPT-2 model with AutoModelForCausalLM."""
