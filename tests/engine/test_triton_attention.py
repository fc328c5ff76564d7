"""The Triton paged decode attention kernel against the torch decode path (interpreter on CPU)."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from engine.kernels.triton.attention import paged_decode_attention  # noqa: E402
from engine.model.paged_attention import _decode_padded  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize(("heads", "kv_heads", "block_size"), [(4, 2, 4), (8, 1, 16), (2, 2, 8)])
def test_paged_decode_equals_the_torch_path(heads: int, kv_heads: int, block_size: int) -> None:
    g = torch.Generator().manual_seed(heads * 10 + block_size)
    num_blocks, head_dim = 40, 32
    k_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=g)
    v_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=g)
    lens = [1, 7, block_size * 3, block_size * 5 + 3]  # a lone token, partial and whole blocks
    perm = torch.randperm(num_blocks, generator=g).tolist()  # fragmented tables
    max_blocks = max(-(-n // block_size) for n in lens)
    tables = torch.zeros(len(lens), max_blocks, dtype=torch.long)
    used = 0
    for i, n in enumerate(lens):
        nb = -(-n // block_size)
        tables[i, :nb] = torch.tensor(perm[used : used + nb])
        used += nb
    q = torch.randn(len(lens), heads, head_dim, generator=g)
    ctx = torch.tensor(lens)
    ref = _decode_padded(q, k_cache, v_cache, tables, ctx, max(lens), head_dim**-0.5)
    out = paged_decode_attention(q.to(DEVICE), k_cache.to(DEVICE), v_cache.to(DEVICE), tables.to(DEVICE), ctx.to(DEVICE), head_dim**-0.5, block_n=16)
    torch.testing.assert_close(out.cpu(), ref, atol=1e-4, rtol=1e-4)


def test_bad_shapes_raise() -> None:
    q = torch.randn(1, 3, 24)
    cache = torch.randn(4, 4, 1, 24)
    with pytest.raises(ValueError, match="power of two"):
        paged_decode_attention(q, cache, cache, torch.zeros(1, 1, dtype=torch.long), torch.ones(1, dtype=torch.long), 1.0)
