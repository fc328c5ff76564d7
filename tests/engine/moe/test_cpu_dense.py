"""The compiled dense MoE layer (fp32 and lossless-bf16 expert weights) against the torch reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.moe import cpu_dense
from engine.moe.reference import moe_experts
from engine.moe.routing import route

pytestmark = pytest.mark.skipif(not cpu_dense.available(), reason="no C compiler to build the CPU MoE kernel")


def _experts(e: int, h: int, i: int, bf16_exact: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w13, w2 = torch.randn(e, 2 * i, h, generator=g) * 0.1, torch.randn(e, h, i, generator=g) * 0.1
    if bf16_exact:
        w13, w2 = w13.bfloat16().float(), w2.bfloat16().float()
    return w13, w2


@pytest.mark.parametrize("bf16_exact", [False, True])
@pytest.mark.parametrize(("tokens", "e", "k", "h", "i"), [(1, 8, 2, 64, 40), (3, 4, 2, 40, 24), (17, 8, 2, 64, 32), (32, 3, 3, 24, 20), (0, 4, 2, 32, 16)])
def test_dense_moe_equals_reference(bf16_exact: bool, tokens: int, e: int, k: int, h: int, i: int) -> None:
    w13, w2 = _experts(e, h, i, bf16_exact, seed=tokens * 10 + e)
    experts = cpu_dense.DenseExperts(w13, w2)
    assert experts.bf16 == bf16_exact  # bf16 storage exactly when it is lossless
    g = torch.Generator().manual_seed(7)
    x = torch.randn(tokens, h, generator=g)
    weights, ids = route(torch.randn(tokens, e, generator=g), k, renormalize=True)
    with torch.no_grad():
        ref = moe_experts(x, weights, ids, w13, w2)
    torch.testing.assert_close(cpu_dense.dense_moe(x, weights, ids, experts), ref, atol=2e-5, rtol=1e-5)


def test_more_than_sixteen_rows_on_one_expert_are_chunked() -> None:
    w13, w2 = _experts(2, 32, 16, False, seed=3)
    x = torch.randn(20, 32)
    ids = torch.tensor([[0, 1]] * 20)  # 20 rows per expert: a chunk of 16 and one of 4
    weights = torch.rand(20, 2)
    with torch.no_grad():
        ref = moe_experts(x, weights, ids, w13, w2)
    torch.testing.assert_close(cpu_dense.dense_moe(x, weights, ids, cpu_dense.DenseExperts(w13, w2)), ref, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("rows", "n", "k"), [(1, 48, 64), (5, 7, 37), (16, 9, 16)])
def test_dense_matmul(dtype: torch.dtype, rows: int, n: int, k: int) -> None:
    w = torch.randn(n, k).to(dtype)
    x = torch.randn(rows, k)
    torch.testing.assert_close(cpu_dense.dense_matmul(x, w), F.linear(x, w.float()), atol=1e-5, rtol=1e-5)


def test_bad_inputs_raise() -> None:
    w13, w2 = _experts(2, 32, 16, False, seed=1)
    experts = cpu_dense.DenseExperts(w13, w2)
    with pytest.raises(ValueError, match="belong together"):
        cpu_dense.DenseExperts(w13, w2[:, :, :8])
    many = cpu_dense.MAX_MOE_TOKENS + 1
    with pytest.raises(ValueError, match="at most"):
        cpu_dense.dense_moe(torch.randn(many, 32), torch.ones(many, 1), torch.zeros(many, 1, dtype=torch.long), experts)
    with pytest.raises(ValueError, match="expert ids"):
        cpu_dense.dense_moe(torch.randn(1, 32), torch.ones(1, 1), torch.full((1, 1), 2), experts)
    with pytest.raises(ValueError, match="hidden size"):
        cpu_dense.dense_moe(torch.randn(1, 16), torch.ones(1, 1), torch.zeros(1, 1, dtype=torch.long), experts)
    with pytest.raises(ValueError, match="x must be"):
        cpu_dense.dense_matmul(torch.randn(cpu_dense.MAX_ROWS + 1, 32), w13[0])


def test_moe_layer_uses_the_kernel_when_prepared_and_agrees() -> None:
    from engine.model.config import ModelConfig
    from engine.model.layers import MoE, prepare_for_inference

    cfg = ModelConfig(architecture="Qwen3MoeForCausalLM", vocab_size=32, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
                      num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24, intermediate_size=64)
    layer = MoE(cfg)
    torch.nn.init.normal_(layer.w13, std=0.1)
    torch.nn.init.normal_(layer.w2, std=0.1)
    torch.nn.init.normal_(layer.gate.weight, std=0.5)
    x = torch.randn(5, 32)
    with torch.no_grad():
        ref = layer(x)
        prepare_for_inference(layer)
        assert layer.cpu_experts is not None and not layer.cpu_experts.bf16
        assert layer.cpu_experts.w13.data_ptr() == layer.w13.data_ptr()  # fp32 experts: one copy, shared
        torch.testing.assert_close(layer(x), ref, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(layer(torch.randn(40, 32)).shape, torch.Size([40, 32]))  # > 32 tokens: torch path
