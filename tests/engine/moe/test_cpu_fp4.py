"""The compiled CPU FP4 matmul and the MoE path built on it, against dequantise + torch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.kernels.cpu import fp4_matmul as cpu_fp4
from engine.kernels.fp4 import quantize
from engine.moe.quantized import QuantizedExperts, moe_experts_fp4, moe_experts_fp4_reference
from engine.moe.routing import route

pytestmark = pytest.mark.skipif(not cpu_fp4.available(), reason="no C compiler to build the CPU FP4 kernel")


@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp4"])
@pytest.mark.parametrize(("rows", "n", "k"), [(1, 48, 64), (3, 40, 96), (16, 8, 32), (0, 8, 32)])
def test_fp4_matmul_equals_dequantise_then_matmul(fmt: str, rows: int, n: int, k: int) -> None:
    g = torch.Generator().manual_seed(rows * 100 + n)
    w = quantize(torch.randn(1, n, k, generator=g) * 0.2, fmt).select(0)
    x = torch.randn(rows, k, generator=g)
    ref = F.linear(x, w.dequantize(torch.float32))
    torch.testing.assert_close(cpu_fp4.fp4_matmul(x, w, w.row_scales()), ref, atol=1e-5, rtol=1e-5)


def test_per_row_second_level_scales_and_nan_blocks() -> None:
    g = torch.Generator().manual_seed(1)
    w = quantize(torch.randn(1, 16, 64, generator=g), "nvfp4").select(0)
    rows = torch.linspace(0.5, 2.0, 16)
    x = torch.randn(2, 64, generator=g)
    ref = F.linear(x, w.dequantize(torch.float32)) / float(w.tensor_scale) * rows  # rows replace the per-tensor scale
    torch.testing.assert_close(cpu_fp4.fp4_matmul(x, w, rows), ref, atol=1e-5, rtol=1e-5)
    m = quantize(torch.randn(1, 4, 64, generator=g), "mxfp4").select(0)
    m.scales[2, 1] = 255  # E8M0 NaN: row 2's outputs are NaN, the others are not
    out = cpu_fp4.fp4_matmul(x, m, m.row_scales())
    assert torch.isnan(out[:, 2]).all() and not torch.isnan(out[:, [0, 1, 3]]).any()


def test_bad_inputs_raise() -> None:
    w = quantize(torch.randn(1, 8, 32), "nvfp4").select(0)
    with pytest.raises(ValueError, match="x must be"):
        cpu_fp4.fp4_matmul(torch.randn(1, 16), w, w.row_scales())
    with pytest.raises(ValueError, match="x must be"):
        cpu_fp4.fp4_matmul(torch.randn(cpu_fp4.MAX_ROWS + 1, 32), w, w.row_scales())
    with pytest.raises(ValueError, match="row_scale"):
        cpu_fp4.fp4_matmul(torch.randn(1, 32), w, torch.ones(3))
    experts = QuantizedExperts(torch.randn(2, 64, 32), torch.randn(2, 32, 32), "mxfp4")
    many = cpu_fp4.MAX_MOE_TOKENS + 1
    with pytest.raises(ValueError, match="at most"):
        cpu_fp4.fp4_moe(torch.randn(many, 32), torch.ones(many, 1), torch.zeros(many, 1, dtype=torch.long), experts)


def test_one_call_layer_with_every_token_on_the_same_experts() -> None:
    g = torch.Generator().manual_seed(3)
    experts = QuantizedExperts(torch.randn(2, 2 * 32, 64, generator=g) * 0.1, torch.randn(2, 64, 32, generator=g) * 0.1, "nvfp4")
    x = torch.randn(16, 64, generator=g)
    ids = torch.tensor([[0, 1]] * 16)  # each expert gets exactly one full chunk of 16 rows
    weights = torch.rand(16, 2, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(cpu_fp4.fp4_moe(x, weights, ids, experts), moe_experts_fp4_reference(x, weights, ids, experts),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp4"])
@pytest.mark.parametrize("tokens", [1, 5, 16, 40])  # 16: the one-call layer at its limit; 40: per-expert kernel + BLAS
def test_fast_moe_path_equals_the_dequantise_path(fmt: str, tokens: int) -> None:
    g = torch.Generator().manual_seed(tokens)
    experts = QuantizedExperts(torch.randn(4, 2 * 32, 64, generator=g) * 0.1, torch.randn(4, 64, 32, generator=g) * 0.1, fmt)
    x = torch.randn(tokens, 64, generator=g)
    weights, ids = route(torch.randn(tokens, 4, generator=g), 2, renormalize=True)
    with torch.no_grad():
        fast = moe_experts_fp4(x, weights, ids, experts)
        ref = moe_experts_fp4_reference(x, weights, ids, experts)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
