"""FP4 experts (NVFP4 and MXFP4) on every MoE family: the served model computes exactly what its
dequantised weights say, is deterministic, and stays close to the unquantised model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import fp4_logits, make_deepseek, make_gpt_oss


def _qwen3_moe(path: Path) -> None:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.Qwen3MoeConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, head_dim=16, num_experts=8, num_experts_per_tok=2,
                                      moe_intermediate_size=32, max_position_embeddings=128, norm_topk_prob=True)
    transformers.Qwen3MoeForCausalLM(cfg).save_pretrained(path)


def _mixtral(path: Path) -> None:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.MixtralConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                                     intermediate_size=32, max_position_embeddings=128)
    transformers.MixtralForCausalLM(cfg).save_pretrained(path)


FAMILIES = {
    "qwen3_moe": _qwen3_moe,
    "mixtral": _mixtral,
    "gpt_oss": lambda p: make_gpt_oss().save_pretrained(p),
    "deepseek_v3": lambda p: make_deepseek(moe_intermediate_size=32, hidden_size=64).save_pretrained(p),
}


@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp4"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_fp4_experts_serve_their_dequantised_weights_deterministically(family: str, fmt: str, tmp_path: Path) -> None:
    FAMILIES[family](tmp_path)
    ids = torch.randint(2, 97, (1, 24), generator=torch.Generator().manual_seed(1))
    served, dequantised, original = fp4_logits(tmp_path, fmt, ids)
    again, _, _ = fp4_logits(tmp_path, fmt, ids)
    assert torch.equal(served, again)  # quantisation and the FP4 kernels are deterministic
    assert (served - dequantised).abs().max().item() <= 1e-3  # the FP4 path computes its weights exactly
    cos = torch.nn.functional.cosine_similarity(served.flatten(), original.flatten(), dim=0).item()
    assert 0.9 < cos < 1.0  # changed by quantisation, but still close to the unquantised model
