"""Tiny random model configurations: real wiring, runnable in seconds, for tests and benchmarks.

``TINY_TEXT`` is a one-layer random text encoder (the MiniLM tokenizer's vocabulary) for training
tests. ``TINY_SWIN_CONFIG``, ``TINY_LLM_CONFIG`` and ``TINY_DECODER`` are small configurations of
the ``large`` design's classes (Swin backbone, Llama-style causal LM) and decoder: the large wiring
without its weights (``benchmarks/model.py`` uses them too; they are no substitute for the real
sizes).
"""

from __future__ import annotations

from typing import Any

TINY_TEXT: dict[str, Any] = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "vocab_size": 30522,
}
TINY_SWIN_CONFIG: dict[str, Any] = {
    "model_type": "swin",
    "image_size": 64,
    "patch_size": 4,
    "embed_dim": 16,
    "depths": [1, 1, 1, 1],
    "num_heads": [1, 2, 2, 4],
    "window_size": 2,
    "out_features": ["stage1", "stage2", "stage3", "stage4"],
}
TINY_LLM_CONFIG: dict[str, Any] = {
    "model_type": "llama",
    "vocab_size": 30522,  # the MiniLM tokenizer's vocabulary (the default tokenizer)
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
}
TINY_DECODER: dict[str, Any] = {
    "hidden_size": 32,
    "fusion_dims": [16, 16, 32, 32],
    "num_decoder_layers": 2,
    "num_attention_heads": 2,
    "num_latent_queries": 2,
    "decoder_ffn_dim": 64,
}
