"""gpt-oss's biased clamped-GLU experts in the C MoE kernels (dense fp32/bf16 panels and FP4 panels)
against the torch twin `moe_experts_glu`."""

from __future__ import annotations

import pytest
import torch

from engine.kernels.activation import ClampedGlu
from engine.kernels.cpu import fp4_panels as cpu_fp4_panels
from engine.kernels.cpu import moe_dense as cpu_dense
from engine.moe.quantized import QuantizedExperts
from engine.moe.reference import moe_experts_glu
from engine.moe.routing import route


def _layer(e: int, h: int, i: int, seed: int, bf16_exact: bool = False) -> tuple[torch.Tensor, torch.Tensor, ClampedGlu]:
    g = torch.Generator().manual_seed(seed)
    w13, w2 = torch.randn(e, 2 * i, h, generator=g) * 0.3, torch.randn(e, h, i, generator=g) * 0.1
    if bf16_exact:
        w13, w2 = w13.bfloat16().float(), w2.bfloat16().float()
    # limit 1.5 with weights this large: many gate and up sums land beyond the clamp on both sides
    glu = ClampedGlu(torch.randn(e, 2 * i, generator=g), torch.randn(e, h, generator=g), limit=1.5, alpha=1.702)
    return w13, w2, glu


def _inputs(tokens: int, h: int, e: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    weights, ids = route(torch.randn(tokens, e, generator=g), k, renormalize=True)
    return torch.randn(tokens, h, generator=g), weights, ids


@pytest.mark.skipif(not cpu_dense.available(), reason="no C compiler to build the CPU MoE kernel")
@pytest.mark.parametrize("bf16_exact", [False, True])
@pytest.mark.parametrize(("tokens", "e", "k", "h", "i"), [(1, 8, 4, 64, 40), (3, 4, 2, 40, 13), (16, 8, 4, 64, 64), (37, 3, 3, 24, 20)])
def test_dense_glu_kernel_equals_torch_twin(bf16_exact: bool, tokens: int, e: int, k: int, h: int, i: int) -> None:
    w13, w2, glu = _layer(e, h, i, seed=tokens + i, bf16_exact=bf16_exact)
    experts = cpu_dense.DenseExperts(w13, w2, glu)
    assert experts.bf16 == bf16_exact
    x, weights, ids = _inputs(tokens, h, e, k, seed=tokens)
    ref = moe_experts_glu(x, weights, ids, glu, lambda n: (w13[n], w2[n]))
    h13 = torch.einsum("th,eih->tei", x, w13) + glu.b13  # the clamp is exercised on both sides
    assert (h13[..., :i] > glu.limit).any() and (h13[..., i:] < -glu.limit).any() and (h13[..., i:].abs() < glu.limit).any()
    torch.testing.assert_close(cpu_dense.dense_moe(x, weights, ids, experts), ref, atol=2e-5, rtol=1e-5)
    plain = cpu_dense.dense_moe(x, weights, ids, cpu_dense.DenseExperts(w13, w2))
    assert tokens == 0 or not torch.allclose(plain, ref, atol=1e-3)  # the activation really differs from SwiGLU


@pytest.mark.skipif(not cpu_dense.available(), reason="no C compiler to build the CPU MoE kernel")
def test_glu_biases_must_fit_the_experts() -> None:
    w13, w2, glu = _layer(4, 32, 16, seed=1)
    with pytest.raises(ValueError, match="do not fit"):
        cpu_dense.DenseExperts(w13[:, :24], w2[:, :, :12], glu)
    with pytest.raises(ValueError, match="do not belong together"):
        ClampedGlu(glu.b13, glu.b2[:3], 1.0, 1.0)


@pytest.mark.skipif(not cpu_fp4_panels.available(), reason="needs a C compiler and AVX-512")
@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
@pytest.mark.parametrize(("tokens", "e", "k"), [(1, 8, 4), (16, 8, 4), (40, 4, 2)])
def test_fp4_glu_kernel_equals_torch_twin_on_the_dequantised_weights(fmt: str, tokens: int, e: int, k: int) -> None:
    w13, w2, glu = _layer(e, 64, 96, seed=tokens + e)
    q = QuantizedExperts(w13, w2, fmt)
    panels = cpu_fp4_panels.FP4PanelExperts(q, glu)
    x, weights, ids = _inputs(tokens, 64, e, k, seed=tokens)
    ref = moe_experts_glu(x, weights, ids, glu, lambda n: q.expert(n, torch.float32))
    torch.testing.assert_close(cpu_fp4_panels.fp4_panel_moe(x, weights, ids, panels), ref, atol=1e-4, rtol=1e-4)
    alone = cpu_fp4_panels.fp4_panel_moe(x[:1], weights[:1], ids[:1], panels)
    assert torch.equal(cpu_fp4_panels.fp4_panel_moe(x, weights, ids, panels)[:1], alone)  # no dependence on the batch
