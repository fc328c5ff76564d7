"""The C per-layer ops (RMSNorm, attention prologue, top-k routing) against their torch twins."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.kernels.cpu import ops as cpu_ops
from engine.model.config import ModelConfig
from engine.model.layers import Attention, Rotary
from engine.model.paged_attention import write_kv
from engine.moe.routing import route

pytestmark = pytest.mark.skipif(not cpu_ops.available(), reason="no C compiler to build the CPU op kernels")


@pytest.mark.parametrize("shape", [(1, 64), (5, 3, 40), (300, 256), (0, 8)])
def test_rms_norm_equals_torch(shape: tuple[int, ...]) -> None:
    x = torch.randn(shape) * 3
    w = torch.randn(shape[-1])
    torch.testing.assert_close(cpu_ops.rms_norm(x, w, 1e-6), F.rms_norm(x, (shape[-1],), w, 1e-6), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="rms_norm takes"):
        cpu_ops.rms_norm(x, w[:-1] if shape[-1] > 1 else torch.ones(2), 1e-6)


@pytest.mark.parametrize("qk_norm", [True, False])
@pytest.mark.parametrize(("tokens", "heads", "kv_heads", "head_dim"), [(1, 4, 2, 64), (7, 2, 1, 16), (33, 8, 8, 32)])
def test_attention_prologue_equals_the_torch_path(qk_norm: bool, tokens: int, heads: int, kv_heads: int, head_dim: int) -> None:
    cfg = ModelConfig(architecture="Qwen3MoeForCausalLM", vocab_size=32, hidden_size=48, num_layers=1, num_heads=heads,
                      num_kv_heads=kv_heads, head_dim=head_dim, num_experts=2, num_experts_per_tok=1, moe_intermediate_size=8,
                      intermediate_size=8, qk_norm=qk_norm)
    attn = Attention(cfg, 0)
    if qk_norm:
        assert attn.q_norm is not None and attn.k_norm is not None
        torch.nn.init.normal_(attn.q_norm.weight)
        torch.nn.init.normal_(attn.k_norm.weight)
    rotary = Rotary(head_dim, 256, 10000.0)
    positions = torch.randperm(256)[:tokens]
    cos_sin = rotary.tables(positions)
    x = torch.randn(tokens, 48)
    slots = torch.randperm(4 * 16)[:tokens]
    caches = [torch.zeros(4, 16, kv_heads, head_dim) for _ in range(4)]
    with torch.no_grad():
        q_ref, k, v = attn._qkv(x, cos_sin)
        write_kv(caches[0], caches[1], k, v, slots)
        q = cpu_ops.attention_prologue(attn.qkv_proj(x), *cos_sin, attn.q_norm.weight if attn.q_norm else None,
                                       attn.k_norm.weight if attn.k_norm else None, cfg.rms_norm_eps, caches[2], caches[3], slots,
                                       heads, kv_heads)
    torch.testing.assert_close(q, q_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(caches[2], caches[0], atol=1e-5, rtol=1e-5)
    assert torch.equal(caches[3], caches[1])  # values are copied as they are


def test_attention_prologue_rejects_bad_inputs() -> None:
    qkv, cs = torch.randn(2, 4 * 16), torch.randn(2, 16)
    cache = torch.zeros(2, 4, 1, 16)
    with pytest.raises(ValueError, match="does not split"):
        cpu_ops.attention_prologue(torch.randn(2, 50), cs, cs, None, None, 1e-6, cache, cache, torch.tensor([0, 1]), 2, 1)
    with pytest.raises(ValueError, match="slots"):
        cpu_ops.attention_prologue(qkv, cs, cs, None, None, 1e-6, cache, cache, torch.tensor([0, 8]), 2, 1)
    with pytest.raises(ValueError, match="k_cache"):
        cpu_ops.attention_prologue(qkv, cs, cs, None, None, 1e-6, cache.bfloat16(), cache, torch.tensor([0, 1]), 2, 1)


@pytest.mark.parametrize("renormalize", [True, False])
@pytest.mark.parametrize(("tokens", "experts", "k"), [(1, 8, 2), (17, 16, 2), (5, 64, 8), (3, 4, 4)])
def test_route_topk_equals_route(renormalize: bool, tokens: int, experts: int, k: int) -> None:
    logits = torch.randn(tokens, experts) * 2
    w_ref, ids_ref = route(logits, k, renormalize)
    w, ids = cpu_ops.route_topk(logits, k, renormalize)
    assert torch.equal(ids, ids_ref)
    torch.testing.assert_close(w, w_ref, atol=1e-6, rtol=1e-5)


def test_route_topk_ties_and_nan() -> None:
    w, ids = cpu_ops.route_topk(torch.zeros(1, 4), 2, False)
    assert ids.tolist() == [[0, 1]] and torch.allclose(w, torch.full((1, 2), 0.25))
    w, ids = cpu_ops.route_topk(torch.full((1, 4), float("nan")), 2, True)
    assert ids.tolist() == [[0, 1]] and torch.isnan(w).all()  # poisoned, in range
    with pytest.raises(ValueError, match="top_k"):
        cpu_ops.route_topk(torch.zeros(1, 4), 5, False)
