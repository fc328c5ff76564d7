"""Every paged-attention path (run views, gathered prefill, padded decode) against
dense causal attention over the same keys and values."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from engine.model.attention import AttentionMetadata
from engine.model.paged_attention import block_runs, paged_attention

BS, HKV, G, D, NUM_BLOCKS = 4, 2, 2, 8, 96


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """q [n, Hq, D] = the last n positions of k/v [ctx, Hkv, D]."""
    n, ctx = q.shape[0], k.shape[0]
    kh = k.transpose(0, 1).repeat_interleave(G, 0)
    vh = v.transpose(0, 1).repeat_interleave(G, 0)
    mask = torch.arange(ctx)[None, :] <= torch.arange(ctx - n, ctx)[:, None]
    o = F.scaled_dot_product_attention(q.transpose(0, 1), kh, vh, attn_mask=mask, scale=scale)
    return o.transpose(0, 1)


def _tables(rng: random.Random, lens: list[int], fragmented: bool) -> list[list[int]]:
    free = list(range(1, NUM_BLOCKS))
    if fragmented:
        rng.shuffle(free)
    out = []
    for ctx in lens:
        n = -(-ctx // BS) + rng.randrange(2)  # sometimes a spare block past the context
        out.append([free.pop(0) for _ in range(n)])
    return out


@pytest.mark.parametrize("fragmented", [False, True])
@pytest.mark.parametrize("query_lens", [[1], [3], [1, 1, 1], [5, 1, 2], [40]])
def test_paths_equal_dense_attention(fragmented: bool, query_lens: list[int]) -> None:
    rng = random.Random(len(query_lens) * 10 + int(fragmented))
    torch.manual_seed(0)
    k_cache = torch.randn(NUM_BLOCKS, BS, HKV, D)
    v_cache = torch.randn(NUM_BLOCKS, BS, HKV, D)
    ctx_lens = [q + rng.randrange(0, 30) for q in query_lens]
    tables = _tables(rng, ctx_lens, fragmented)
    meta = AttentionMetadata.build(query_lens, ctx_lens, tables, BS, "cpu")
    q = torch.randn(sum(query_lens), HKV * G, D)
    out = paged_attention(q, k_cache, v_cache, meta, 0.3)
    for i, (n, ctx) in enumerate(zip(query_lens, ctx_lens, strict=True)):
        flat = torch.tensor([tables[i][p // BS] * BS + p % BS for p in range(ctx)])
        k = k_cache.view(-1, HKV, D)[flat]
        v = v_cache.view(-1, HKV, D)[flat]
        lo = meta.cu_query_lens[i]
        torch.testing.assert_close(out[lo : lo + n], _reference(q[lo : lo + n], k, v, 0.3), atol=1e-5, rtol=1e-5)


def test_block_runs_split_at_gaps() -> None:
    assert block_runs([4, 5, 6, 9, 10, 2], 6) == [(4, 3), (9, 2), (2, 1)]
    assert block_runs([4, 5, 6, 9], 2) == [(4, 2)]
    assert block_runs([], 0) == []
