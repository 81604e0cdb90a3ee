"""Compressors that turn a causal LM into a smaller one: distill, prune (attention heads), quantize.

Every compressor writes a normal `save_pretrained` checkpoint plus `compfair_compression.json`.
"""
