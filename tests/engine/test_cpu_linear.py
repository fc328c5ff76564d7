"""The packed-panel linear kernel (fp32 and lossless-bf16 weights) against F.linear."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.kernels.cpu import linear as cpu_linear

pytestmark = pytest.mark.skipif(not cpu_linear.available(), reason="no C compiler to build the CPU linear kernel")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("rows", "n", "k"), [(1, 48, 64), (5, 7, 37), (6, 16, 1), (7, 33, 16), (13, 100, 65), (64, 40, 24)])
def test_packed_linear_equals_f_linear(dtype: torch.dtype, rows: int, n: int, k: int) -> None:
    g = torch.Generator().manual_seed(rows * 1000 + n + k)
    w = torch.randn(n, k, generator=g).to(dtype).float()
    x = torch.randn(rows, k, generator=g)
    bias = torch.randn(n, generator=g)
    panels = cpu_linear.pack(w, dtype)
    assert panels.shape == (-(-n // 16), k, 16) and panels.dtype == dtype
    assert torch.equal(cpu_linear.unpack(panels, n), w)
    torch.testing.assert_close(cpu_linear.packed_linear(x, panels, n), F.linear(x, w), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cpu_linear.packed_linear(x, panels, n, bias), F.linear(x, w, bias), atol=1e-5, rtol=1e-5)


def test_rows_with_a_stride_and_an_empty_batch() -> None:
    w = torch.randn(20, 32)
    panels = cpu_linear.pack(w)
    x = torch.randn(9, 48)[:, 8:40]  # row stride 48, contiguous along K
    torch.testing.assert_close(cpu_linear.packed_linear(x, panels, 20), F.linear(x, w), atol=1e-5, rtol=1e-5)
    assert cpu_linear.packed_linear(torch.randn(0, 32), panels, 20).shape == (0, 20)


def test_pack_picks_bf16_exactly_when_lossless() -> None:
    w = torch.randn(24, 8)
    assert cpu_linear.pack(w).dtype == torch.float32
    assert cpu_linear.pack(w.bfloat16().float()).dtype == torch.bfloat16
    stacked = cpu_linear.pack(torch.randn(3, 24, 8).bfloat16())  # leading dims: one panel set per matrix
    assert stacked.shape == (3, 2, 8, 16)


def test_nan_propagates() -> None:
    w = torch.randn(16, 8)
    x = torch.randn(2, 8)
    x[1, 3] = float("nan")
    y = cpu_linear.packed_linear(x, cpu_linear.pack(w), 16)
    assert torch.isfinite(y[0]).all() and torch.isnan(y[1]).all()


def test_packed_linear_module_replaces_nn_linear() -> None:
    lin = nn.Linear(40, 24, bias=True)
    layer = cpu_linear.PackedLinear(lin)
    x = torch.randn(2, 3, 40)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), lin(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(layer.weight, lin.weight)
    assert "panels=torch.float32" in repr(layer)


def test_bad_inputs_raise() -> None:
    panels = cpu_linear.pack(torch.randn(20, 32))
    with pytest.raises(ValueError, match="x must be"):
        cpu_linear.packed_linear(torch.randn(2, 31), panels, 20)
    with pytest.raises(ValueError, match="panels hold"):
        cpu_linear.packed_linear(torch.randn(2, 32), panels, 40)
    with pytest.raises(ValueError, match="bias"):
        cpu_linear.packed_linear(torch.randn(2, 32), panels, 20, torch.randn(19))
    with pytest.raises(ValueError, match="panels must be"):
        cpu_linear.packed_linear(torch.randn(2, 32), torch.randn(2, 32, 8), 20)
    with pytest.raises(ValueError, match="fp32 or bf16"):
        cpu_linear.pack(torch.randn(4, 4), torch.float16)


def _schedule(**knobs: int) -> tuple[int, ...]:
    """linear.c's tune array: the defaults with some knobs changed."""
    return tuple(knobs.get(name, value) for name, value in zip(cpu_linear.KNOBS, cpu_linear.DEFAULT, strict=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("rows", "n", "k"), [(7, 100, 300), (13, 40, 129), (16, 768, 512), (16, 33, 257), (32, 48, 200), (33, 20, 300)])
def test_k_blocked_tiles_equal_whole_k_tiles_bitwise(dtype: torch.dtype, rows: int, n: int, k: int) -> None:
    """The k-blocked schedule (panel.h rows_panels_kblocked, AVX2 builds) is the whole-K one's fast
    twin: every sum is the same FMA chain, so the outputs agree bit for bit, bias, partial panels,
    a row stride, block tails and row counts past its limit (33: the whole-K path) included."""
    import ctypes

    g = torch.Generator().manual_seed(rows * 7 + n + k)
    panels = cpu_linear.pack(torch.randn(n, k, generator=g).to(dtype), dtype)
    x, bias = torch.randn(rows, k + 5, generator=g)[:, 3:k + 3], torch.randn(n, generator=g)
    lib = cpu_linear._KERNELS.require()

    def run(**knobs: int) -> torch.Tensor:
        arr = (ctypes.c_int64 * len(cpu_linear.KNOBS))(*_schedule(**knobs))
        return cpu_linear._run(lib, x, panels, n, bias, ctypes.addressof(arr))

    ref = run(k_block=0)
    torch.testing.assert_close(ref, F.linear(x, cpu_linear.unpack(panels, n), bias), atol=1e-4, rtol=1e-4)
    for kb in (1, 64, 128, k - 1):
        for mr in (3, 4, 6):
            for grain in (1, 2, 4):
                assert torch.equal(run(k_block=kb, rows_per_tile=mr, panels_per_item=grain), ref), (kb, mr, grain)
