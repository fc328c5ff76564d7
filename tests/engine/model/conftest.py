"""Session fixtures: tiny random checkpoints of each family (built by tiny_models.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_models import make_deepseek, make_dense, make_gpt_oss


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dense(tmp_path_factory.mktemp("qwen3"), "qwen3")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32, "rope_theta": 500000.0}
    return make_dense(tmp_path_factory.mktemp("llama"), "llama", seed=1, rope_parameters=rope, attention_bias=True,
                      tie_word_embeddings=True)


@pytest.fixture(scope="session")
def tiny_gpt_oss(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gpt_oss")
    make_gpt_oss().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_deepseek(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("deepseek")
    make_deepseek().save_pretrained(path)
    return path

