"""The Triton paged decode kernel's sliding-window and sink variants against the torch reference
(the interpreter on CPU, TRITON_INTERPRET=1; bf16 caches are read as fp32 there)."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from engine.kernels.triton.attention import paged_decode_attention  # noqa: E402
from engine.model.attention import AttentionMetadata  # noqa: E402
from engine.model.paged_attention import paged_attention_window_torch  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize(("window", "with_sinks", "dtype"), [
    (5, True, torch.float32), (16, False, torch.float32), (0, True, torch.float32), (7, True, torch.bfloat16),
])
def test_decode_window_and_sinks_equal_the_torch_reference(window: int, with_sinks: bool, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(window + 3)
    heads, kv_heads, block_size, head_dim, num_blocks = 6, 2, 4, 16, 40
    lens = [1, 4, 9, 37]
    perm = torch.randperm(num_blocks, generator=g).tolist()
    tables, used = [], 0
    for n in lens:
        nb = -(-n // block_size)
        tables.append(perm[used : used + nb])
        used += nb
    meta = AttentionMetadata.build([1] * len(lens), lens, tables, block_size, "cpu")
    k = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=g).to(dtype)
    v = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=g).to(dtype)
    q = torch.randn(len(lens), heads, head_dim, generator=g).to(dtype)
    sinks = torch.randn(heads, generator=g) * 2 if with_sinks else None
    scale = head_dim**-0.5
    ref = paged_attention_window_torch(q.float(), k.float(), v.float(), meta, scale, window, sinks)
    out = paged_decode_attention(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), meta.block_tables.to(DEVICE),
                                 meta.context_lens_t.to(DEVICE), scale, block_n=16, window=window,
                                 sinks=None if sinks is None else sinks.to(DEVICE))
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.cpu().float(), ref, atol=tol, rtol=tol)
