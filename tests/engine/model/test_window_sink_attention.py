"""Sliding-window and sink attention (gpt-oss) over the paged cache: the C kernel and the
dispatcher equal the torch reference, and the reference equals a dense masked softmax."""

from __future__ import annotations

import pytest
import torch

from engine.kernels.cpu import attention as cpu_attention
from engine.model.paged_attention import paged_attention, paged_attention_window_torch
from tests.engine.test_cpu_attention import _case as paged_case


def _case(query_lens: list[int], ctx_lens: list[int], heads: tuple[int, int, int], block_size: int, seed: int):
    """test_cpu_attention's scattered-block case plus per-head sink logits (and the block tables)."""
    q, k, v, meta = paged_case(query_lens, ctx_lens, heads, block_size, seed)
    sinks = torch.randn(heads[0], generator=torch.Generator().manual_seed(seed + 1)) * 2
    return q, k, v, sinks, meta, meta.block_table_lists


def test_reference_equals_a_dense_masked_softmax_with_sinks() -> None:
    q, k, v, sinks, meta, tables = _case([5], [23], (4, 2, 8), 4, seed=1)
    window, scale = 6, 0.3
    keys = k[tables[0]].flatten(0, 1)[:23].repeat_interleave(2, 1)  # [23, 4, 8]
    vals = v[tables[0]].flatten(0, 1)[:23].repeat_interleave(2, 1)
    expected = torch.empty_like(q)
    for t in range(5):
        pos = 18 + t
        lo = pos - window + 1
        s = torch.einsum("hd,khd->hk", q[t], keys[lo : pos + 1]) * scale
        p = torch.softmax(torch.cat([s, sinks[:, None]], 1), 1)[:, :-1]
        expected[t] = torch.einsum("hk,khd->hd", p, vals[lo : pos + 1])
    got = paged_attention_window_torch(q, k, v, meta, scale, window, sinks)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


CASES = [
    ([1], [1], (4, 2, 64), 16, 8),
    ([1, 1, 1], [5, 40, 130], (6, 2, 16), 4, 5),  # decode, window inside / across blocks
    ([17], [300], (4, 2, 64), 16, 128),  # a verification step
    ([3, 1, 8], [50, 97, 8], (8, 1, 128), 8, 0),  # sinks only
    ([2, 9], [19, 70], (6, 3, 24), 16, 7),  # head_dim not a multiple of 8
    ([4], [200], (2, 2, 64), 64, 33),  # 64-token blocks
]


@pytest.mark.skipif(not cpu_attention.available(), reason="no C compiler to build the CPU attention kernel")
@pytest.mark.parametrize(("query_lens", "ctx_lens", "heads", "block_size", "window"), CASES)
@pytest.mark.parametrize("with_sinks", [True, False])
def test_kernel_equals_torch_reference(query_lens: list[int], ctx_lens: list[int], heads: tuple[int, int, int],
                                       block_size: int, window: int, with_sinks: bool) -> None:
    if not window and not with_sinks:
        pytest.skip("the plain kernel is tested in tests/engine/test_cpu_attention.py")
    q, k, v, sinks, meta, _ = _case(query_lens, ctx_lens, heads, block_size, seed=sum(ctx_lens) + window)
    s = sinks if with_sinks else None
    scale = heads[2] ** -0.5
    ref = paged_attention_window_torch(q, k, v, meta, scale, window, s)
    torch.testing.assert_close(cpu_attention.paged_attention(q, k, v, meta, scale, window=window, sinks=s), ref, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(paged_attention(q, k, v, meta, scale, window=window, sinks=s), ref, atol=2e-5, rtol=1e-5)


@pytest.mark.skipif(not cpu_attention.available(), reason="no C compiler to build the CPU attention kernel")
def test_a_sink_far_above_every_score_keeps_the_output_finite() -> None:
    q, k, v, sinks, meta, _ = _case([2], [40], (2, 1, 64), 16, seed=3)
    sinks = torch.tensor([200.0, -200.0])
    ref = paged_attention_window_torch(q, k, v, meta, 0.125, 0, sinks)
    out = cpu_attention.paged_attention(q, k, v, meta, 0.125, sinks=sinks)
    assert torch.isfinite(out).all() and out[:, 0].abs().max() < 1e-20
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
