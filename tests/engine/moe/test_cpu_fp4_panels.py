"""The FP4 panel MoE layer (AVX-512) against dequantise + torch, for both formats and any batch."""

from __future__ import annotations

import pytest
import torch

from engine.kernels.cpu import fp4_panels as cpu_fp4_panels
from engine.moe.quantized import QuantizedExperts, moe_experts_fp4_reference
from engine.moe.routing import route

pytestmark = pytest.mark.skipif(not cpu_fp4_panels.available(), reason="needs a C compiler and AVX-512")


def _experts(e: int, h: int, i: int, fmt: str, seed: int) -> QuantizedExperts:
    g = torch.Generator().manual_seed(seed)
    return QuantizedExperts(torch.randn(e, 2 * i, h, generator=g) * 0.1, torch.randn(e, h, i, generator=g) * 0.1, fmt)


@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp4"])
@pytest.mark.parametrize(("tokens", "e", "k", "h", "i"), [(1, 8, 2, 64, 32), (5, 4, 2, 96, 64), (17, 8, 2, 64, 96), (70, 8, 2, 256, 320), (0, 4, 2, 32, 32)])
def test_fp4_panel_moe_equals_dequantised_reference(fmt: str, tokens: int, e: int, k: int, h: int, i: int) -> None:
    q = _experts(e, h, i, fmt, seed=tokens + e)
    panels = cpu_fp4_panels.FP4PanelExperts(q)
    g = torch.Generator().manual_seed(tokens)
    x = torch.randn(tokens, h, generator=g)
    weights, ids = route(torch.randn(tokens, e, generator=g), k, renormalize=True)
    ref = moe_experts_fp4_reference(x, weights, ids, q)
    torch.testing.assert_close(cpu_fp4_panels.fp4_panel_moe(x, weights, ids, panels), ref, atol=1e-4, rtol=1e-4)


def test_per_row_second_level_scales_are_applied() -> None:
    """ModelOpt checkpoints carry one second-level scale per expert and projection: per-row scales."""
    q = _experts(3, 32, 32, "nvfp4", seed=1)
    q.w13.tensor_scale = torch.tensor([0.5, 2.0, 1.0]).view(3, 1, 1) * float(q.w13.tensor_scale)  # per expert, as loaded
    x = torch.randn(9, 32)
    weights, ids = route(torch.randn(9, 3), 2, renormalize=True)
    ref = moe_experts_fp4_reference(x, weights, ids, q)
    torch.testing.assert_close(cpu_fp4_panels.fp4_panel_moe(x, weights, ids, cpu_fp4_panels.FP4PanelExperts(q)), ref, atol=1e-4, rtol=1e-4)


def test_a_token_does_not_depend_on_its_batch() -> None:
    q = _experts(8, 64, 64, "mxfp4", seed=2)
    panels = cpu_fp4_panels.FP4PanelExperts(q)
    x = torch.randn(40, 64)
    weights, ids = route(torch.randn(40, 8), 2, renormalize=True)
    alone = cpu_fp4_panels.fp4_panel_moe(x[3:4], weights[3:4], ids[3:4], panels)
    assert torch.equal(cpu_fp4_panels.fp4_panel_moe(x, weights, ids, panels)[3:4], alone)


def test_bad_inputs_are_refused() -> None:
    q = _experts(4, 32, 32, "nvfp4", seed=3)
    panels = cpu_fp4_panels.FP4PanelExperts(q)
    x = torch.randn(2, 32)
    with pytest.raises(ValueError, match="expert ids"):
        cpu_fp4_panels.fp4_panel_moe(x, torch.ones(2, 2), torch.tensor([[0, 4], [1, 2]]), panels)
    with pytest.raises(ValueError, match="CPU"):
        cpu_fp4_panels.fp4_panel_moe(torch.randn(2, 16), torch.ones(2, 2), torch.zeros(2, 2, dtype=torch.long), panels)
    other = _experts(4, 32, 48, "nvfp4", seed=4)
    with pytest.raises(ValueError, match="matching experts"):
        cpu_fp4_panels.FP4PanelExperts(QuantizedExperts.from_fp4(q.w13, other.w2))


@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp4"])
def test_every_scale_byte_decodes_like_the_format(fmt: str) -> None:
    """The kernel decodes scale bytes in registers: every finite E4M3 byte (subnormals included) and
    E8M0 exponents from 2^-127 up must give what the format's reference dequantisation gives; a NaN
    scale byte poisons exactly the outputs it feeds."""
    q = _experts(4, 64, 64, fmt, seed=5)
    g = torch.Generator().manual_seed(9)
    nan_code = 0x7F if fmt == "nvfp4" else 255
    finite = [b for b in range(256) if b & 0x7F != 0x7F] if fmt == "nvfp4" else list(range(0, 136))
    for w in (q.w13, q.w2):
        raw = torch.tensor(finite, dtype=torch.uint8)[torch.randint(0, len(finite), w.scales.shape, generator=g)]
        raw.view(-1)[: len(finite)] = torch.tensor(finite, dtype=torch.uint8)
        w.scales = raw.view(torch.float8_e4m3fn) if fmt == "nvfp4" else raw
    x = torch.randn(12, 64, generator=g)
    weights, ids = route(torch.randn(12, 4, generator=g), 2, renormalize=True)
    panels = cpu_fp4_panels.FP4PanelExperts(q)
    ref = moe_experts_fp4_reference(x, weights, ids, q)
    out = cpu_fp4_panels.fp4_panel_moe(x, weights, ids, panels)
    assert torch.isfinite(ref).all()
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    raw = q.w2.scales.view(torch.uint8).clone()
    raw[1, 5, 0] = nan_code  # expert 1, output column 5
    q.w2.scales = raw.view(torch.float8_e4m3fn) if fmt == "nvfp4" else raw
    ref = moe_experts_fp4_reference(x, weights, ids, q)
    out = cpu_fp4_panels.fp4_panel_moe(x, weights, ids, cpu_fp4_panels.FP4PanelExperts(q))
    assert torch.isnan(ref).any() and not torch.isnan(ref).all()
    assert torch.equal(torch.isnan(out), torch.isnan(ref))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4, equal_nan=True)
