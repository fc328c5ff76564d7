"""Tiny random Hugging Face checkpoints (saved with save_pretrained) for engine tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def make_tiny_checkpoint(path: Path, arch: str = "qwen3_moe", seed: int = 0, **overrides: object) -> Path:
    """Save a tiny random model of `arch` ('qwen3_moe' or 'mixtral') in HF format under `path`."""
    import transformers

    common = dict(
        vocab_size=128,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        eos_token_id=1,
        bos_token_id=0,
    )
    common.update(overrides)
    torch.manual_seed(seed)
    if arch == "qwen3_moe":
        cfg = transformers.Qwen3MoeConfig(
            head_dim=16, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
            intermediate_size=64, norm_topk_prob=True, **common,
        )
        model = transformers.Qwen3MoeForCausalLM(cfg)
    elif arch == "mixtral":
        cfg = transformers.MixtralConfig(num_local_experts=4, num_experts_per_tok=2, intermediate_size=48, **common)
        model = transformers.MixtralForCausalLM(cfg)
    else:
        raise ValueError(arch)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_qwen"), "qwen3_moe")


@pytest.fixture(scope="session")
def tiny_mixtral(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_mixtral"), "mixtral")
