"""Config parsing: RoPE scaling types match transformers' frequencies; unsupported fields raise."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from engine.errors import ModelLoadError
from engine.model.config import ModelConfig
from engine.model.rope import RopeScaling


def _llama(**over: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"architectures": ["LlamaForCausalLM"], "vocab_size": 97, "hidden_size": 48,
                           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                           "intermediate_size": 40, "max_position_embeddings": 256}
    raw.update(over)
    return raw


ROPES = [
    {"rope_type": "linear", "factor": 4.0, "rope_theta": 5000.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 64, "rope_theta": 500000.0},
    {"rope_type": "yarn", "factor": 16.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
     "original_max_position_embeddings": 64, "rope_theta": 150000.0},
    {"rope_type": "yarn", "factor": 40.0, "mscale": 1.0, "mscale_all_dim": 1.0,
     "original_max_position_embeddings": 32, "rope_theta": 10000.0},
]


@pytest.mark.parametrize("rope", ROPES, ids=lambda r: f"{r['rope_type']}-{r['factor']}")
def test_rope_frequencies_and_scale_equal_transformers(rope: dict[str, Any]) -> None:
    import transformers
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf_cfg = transformers.LlamaConfig(hidden_size=64, num_attention_heads=2, max_position_embeddings=2048,
                                      rope_parameters=dict(rope))
    ref_inv, ref_scale = ROPE_INIT_FUNCTIONS[rope["rope_type"]](hf_cfg, torch.device("cpu"))
    cfg = ModelConfig.from_hf(_llama(rope_parameters=dict(rope), max_position_embeddings=2048, hidden_size=64,
                                     num_attention_heads=2))
    inv, scale = cfg.rope.frequencies(32)
    assert cfg.rope.rope_type == rope["rope_type"]
    torch.testing.assert_close(inv, ref_inv.float(), rtol=1e-6, atol=0)
    assert scale == pytest.approx(ref_scale, rel=1e-7)


def test_old_style_rope_scaling_and_theta_are_read() -> None:
    cfg = ModelConfig.from_hf(_llama(rope_theta=1234.0, rope_scaling={"type": "linear", "factor": 2.0}))
    assert (cfg.rope.rope_type, cfg.rope.factor, cfg.rope_theta) == ("linear", 2.0, 1234.0)
    assert ModelConfig.from_hf(_llama()).rope.rope_type == RopeScaling().rope_type == "default"


@pytest.mark.parametrize(("over", "field"), [
    ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0}}, "rope_type 'dynamic'"),
    ({"rope_parameters": {"rope_type": "longrope", "factor": 2.0}}, "rope_type 'longrope'"),
    ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "low_freq_factor": 1.0}}, "rope_scaling.low_freq_factor"),
    ({"rope_parameters": {"rope_type": "linear"}}, "rope_scaling.factor"),
    ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"layer_types": ["sliding_attention", "full_attention"]}, "layer_types"),
    ({"sliding_window": 64}, "sliding_window"),
    ({"architectures": ["Phi3ForCausalLM"]}, "Phi3ForCausalLM"),
])
def test_unsupported_config_fields_raise_naming_the_field(over: dict[str, Any], field: str) -> None:
    with pytest.raises(ModelLoadError, match=field):
        ModelConfig.from_hf(_llama(**over))


def test_qwen_window_size_without_use_sliding_window_is_accepted() -> None:
    raw = _llama(architectures=["Qwen3ForCausalLM"], sliding_window=4096, use_sliding_window=False, head_dim=16)
    assert ModelConfig.from_hf(raw).qk_norm
    with pytest.raises(ModelLoadError, match="use_sliding_window"):
        ModelConfig.from_hf({**raw, "use_sliding_window": True})
