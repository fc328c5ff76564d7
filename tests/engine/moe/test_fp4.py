"""FP4 formats: golden vectors (ties, zeros, saturation, negative zero, NaN/Inf), packing, round trips."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.kernels.fp4 import e2m1_decode, e2m1_encode, pack, quantize, unpack


def test_e2m1_golden_values_ties_to_even_and_saturation() -> None:
    x = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 7.0, 100.0, 0.3, 5.1])
    expect = [0.0, 0.0, 0.5, 1.0, 1.0, 1.0, 1.5, 2.0, 2.0, 2.0, 3.0, 4.0, 4.0, 4.0, 6.0, 6.0, 6.0, 0.5, 6.0]
    assert e2m1_decode(e2m1_encode(x)).tolist() == expect
    assert e2m1_decode(e2m1_encode(-x)).tolist() == [-v for v in expect]
    assert e2m1_encode(torch.tensor([0.0, -0.0])).tolist() == [0, 8]  # negative zero keeps its sign bit
    assert e2m1_encode(torch.tensor([0.5, 6.0, -6.0])).tolist() == [1, 7, 15]


def test_packing_puts_the_even_element_in_the_low_nibble() -> None:
    codes = torch.tensor([[1, 2, 15, 0]], dtype=torch.uint8)
    packed = pack(codes)
    assert packed.tolist() == [[0x21, 0x0F]]
    assert torch.equal(unpack(packed), codes)


@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp4"])
def test_exactly_representable_weights_round_trip_exactly(fmt: str) -> None:
    values = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0] * 8)
    w = (values * torch.tensor([1.0, -1.0]).repeat(32)).view(2, 32) * 0.25
    q = quantize(w, fmt)
    assert torch.equal(q.dequantize(), w)


def test_mxfp4_scale_is_the_ocp_power_of_two_rule() -> None:
    w = torch.zeros(1, 32)
    w[0, 0] = 10.0  # floor(log2 10) = 3 -> scale 2^(3-2) = 2; 10/2 = 5 -> ties to 4 -> 8
    q = quantize(w, "mxfp4")
    assert q.scales.tolist() == [[128]] and q.dequantize()[0, 0].item() == 8.0
    assert quantize(torch.zeros(1, 32), "mxfp4").dequantize().abs().sum() == 0


def test_nan_or_inf_poisons_only_its_block() -> None:
    for fmt, block in (("nvfp4", 16), ("mxfp4", 32)):
        w = torch.randn(2, 2 * block)
        w[0, 3] = float("nan")
        w[1, block + 1] = float("inf")
        d = quantize(w, fmt).dequantize()
        assert torch.isnan(d[0, :block]).all() and torch.isfinite(d[0, block:]).all()
        assert torch.isnan(d[1, block:]).all() and torch.isfinite(d[1, :block]).all()


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from(["nvfp4", "mxfp4"]), st.floats(1e-3, 1e3))
def test_round_trip_error_is_bounded_by_the_block_scale(seed: int, fmt: str, scale: float) -> None:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, 64, generator=g) * scale
    q = quantize(w, fmt)
    err = (q.dequantize() - w).abs().view(4, -1, q.block)
    # Rounding error is at most one unit of the block scale (the 4..6 gap is 2 units); NVFP4's E4M3
    # rounded scale can saturate amax by <= 1/16 of 6, MXFP4's power-of-two scale by < 2 units.
    bound = q.block_scales()[..., None] * (1.5 if fmt == "nvfp4" else 2.0) * (1 + 1e-6)
    assert bool((err <= bound).all())


@pytest.mark.parametrize(("fmt", "bits"), [("nvfp4", 4.5), ("mxfp4", 4.25)])
def test_packed_weights_are_at_least_3_5x_smaller_than_bf16(fmt: str, bits: float) -> None:
    w = torch.randn(512, 1024)
    q = quantize(w, fmt)
    assert abs(q.nbytes * 8 / w.numel() - bits) < 0.01
    assert w.numel() * 2 / q.nbytes >= 3.5


@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp4"])
def test_table_dequantisation_equals_the_reference_twin(fmt: str) -> None:
    w = torch.randn(3, 8, 64)
    w[0, 0, 0] = float("nan")
    q = quantize(w, fmt)
    torch.testing.assert_close(q.dequantize(), q.dequantize_reference(), equal_nan=True, atol=0, rtol=0)
    torch.testing.assert_close(q.select(2).dequantize(), q.dequantize()[2], atol=0, rtol=0)
