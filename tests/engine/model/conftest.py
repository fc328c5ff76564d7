"""Tiny random Hugging Face checkpoints of the dense and MoE families (odd shapes) for model tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

COMMON: dict[str, Any] = dict(
    vocab_size=97, hidden_size=48, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2,
    max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=False, eos_token_id=1, bos_token_id=0,
)


def make_dense(path: Path, arch: str, seed: int = 0, **over: Any) -> Path:
    """Save a tiny random `qwen3` or `llama` model (head_dim 12 or 8, intermediate 40) under `path`."""
    import transformers

    kw = {**COMMON, "intermediate_size": 40, **over}
    torch.manual_seed(seed)
    if arch == "qwen3":
        model: Any = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(head_dim=12, **kw))
    elif arch == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kw))
    else:
        raise ValueError(arch)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dense(tmp_path_factory.mktemp("qwen3"), "qwen3")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32, "rope_theta": 500000.0}
    return make_dense(tmp_path_factory.mktemp("llama"), "llama", seed=1, rope_parameters=rope, attention_bias=True,
                      tie_word_embeddings=True)
