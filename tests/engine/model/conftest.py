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


def gpt_oss_config(**over: Any) -> Any:
    """A tiny gpt-oss config: window 5 on alternate layers, YaRN, 4 experts of 32 (MXFP4-ready)."""
    import transformers

    rope = {"rope_type": "yarn", "factor": 8.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
            "original_max_position_embeddings": 32, "rope_theta": 150000.0}
    kw: dict[str, Any] = dict(
        vocab_size=97, hidden_size=64, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2, head_dim=16,
        intermediate_size=32, num_local_experts=4, num_experts_per_tok=2, sliding_window=5, max_position_embeddings=256,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"], rope_parameters=rope,
        initializer_range=0.1, eos_token_id=1, bos_token_id=0, pad_token_id=0, tie_word_embeddings=False,
    )
    kw.update(over)
    return transformers.GptOssConfig(**kw)


def make_gpt_oss(seed: int = 0, **over: Any) -> Any:
    """A tiny random transformers GptOssForCausalLM with non-zero sinks and biases (eval mode)."""
    import transformers

    torch.manual_seed(seed)
    model = transformers.GptOssForCausalLM(gpt_oss_config(**over)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "sinks" in name or "bias" in name:
                p.normal_(0.0, 0.5)
    return model


@pytest.fixture(scope="session")
def tiny_gpt_oss(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gpt_oss")
    make_gpt_oss().save_pretrained(path)
    return path
