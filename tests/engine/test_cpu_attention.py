"""The compiled CPU paged attention (decode and verification steps) against the torch path."""

from __future__ import annotations

import random

import pytest
import torch

from engine.kernels.cpu import attention as cpu_attention
from engine.model.attention import AttentionMetadata
from engine.model.paged_attention import paged_attention, paged_attention_torch

pytestmark = pytest.mark.skipif(not cpu_attention.available(), reason="no C compiler to build the CPU attention kernel")


def _case(query_lens: list[int], ctx_lens: list[int], heads: tuple[int, int, int], block_size: int, seed: int):
    num_heads, num_kv_heads, head_dim = heads
    rng = random.Random(seed)
    need = sum(-(-c // block_size) for c in ctx_lens)
    blocks = list(range(need + 3))
    rng.shuffle(blocks)  # scattered blocks, as after evictions
    tables, used = [], 0
    for c in ctx_lens:
        n = -(-c // block_size)
        tables.append(blocks[used : used + n])
        used += n
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(need + 3, block_size, num_kv_heads, head_dim, generator=g)
    v = torch.randn(need + 3, block_size, num_kv_heads, head_dim, generator=g)
    q = torch.randn(sum(query_lens), num_heads, head_dim, generator=g)
    return q, k, v, AttentionMetadata.build(query_lens, ctx_lens, tables, block_size, "cpu")


@pytest.mark.parametrize(
    ("query_lens", "ctx_lens", "heads", "block_size"),
    [
        ([1], [1], (4, 2, 64), 16),
        ([1], [2000], (4, 2, 64), 16),
        ([17], [700], (4, 2, 64), 16),  # a verification step: 16 drafts + the last token
        ([1, 5, 1, 32], [16, 40, 333, 32], (4, 2, 64), 16),  # ragged, a chunk that is the whole context
        ([3, 1], [50, 97], (8, 1, 128), 8),
        ([2, 1], [19, 70], (6, 3, 24), 16),  # head_dim not a multiple of 8: the scalar path
        ([1, 4], [65, 130], (2, 2, 64), 64),
        ([6, 9], [200, 9], (4, 1, 40), 64),  # many rows per KV head (the tiled path), a 40-dim head, a 64-token block
    ],
)
def test_kernel_equals_torch(query_lens: list[int], ctx_lens: list[int], heads: tuple[int, int, int], block_size: int) -> None:
    q, k, v, meta = _case(query_lens, ctx_lens, heads, block_size, seed=sum(ctx_lens))
    scale = heads[2] ** -0.5
    ref = paged_attention_torch(q, k, v, meta, scale)
    torch.testing.assert_close(cpu_attention.paged_attention(q, k, v, meta, scale), ref, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(paged_attention(q, k, v, meta, scale), ref, atol=2e-5, rtol=1e-5)  # the dispatcher picks it


def test_large_scores_do_not_overflow() -> None:
    q, k, v, meta = _case([2], [90], (2, 1, 64), 16, seed=5)
    q *= 40.0  # scores in the hundreds: the running max keeps every exp finite
    ref = paged_attention_torch(q, k, v, meta, 0.125)
    out = cpu_attention.paged_attention(q, k, v, meta, 0.125)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_unsupported_steps_are_refused() -> None:
    q, k, v, meta = _case([cpu_attention.MAX_QUERY_LEN + 1], [100], (4, 2, 24), 16, seed=1)  # no tiled path for 24 dims
    assert not cpu_attention.supports(q, k, meta)
    with pytest.raises(ValueError, match="new tokens per sequence"):
        cpu_attention.paged_attention(q, k, v, meta, 0.125)
    q, k, v, meta = _case([1], [10], (4, 2, 64), 16, seed=2)
    assert not cpu_attention.supports(q.bfloat16(), k.bfloat16(), meta)


@pytest.mark.parametrize(
    ("query_lens", "ctx_lens", "heads", "block_size"),
    [
        ([17], [2000], (4, 2, 64), 16),  # a long verification step: 34 rows per KV head
        ([3, 7, 2], [31, 300, 16], (4, 2, 64), 16),  # 6 / 14 / 4 rows: the 4-, 2- and 1-row tails
        ([5], [77], (8, 1, 128), 8),  # 40 rows of 128 dims, blocks smaller than a 16-key tile
        ([9], [130], (2, 2, 32), 64),  # one query head per KV head, 64-token blocks
        ([32], [40], (8, 2, 64), 16),  # 128 rows per KV head: beyond the tile's row limit (row path)
    ],
)
def test_tiled_path_equals_row_path(query_lens: list[int], ctx_lens: list[int], heads: tuple[int, int, int], block_size: int) -> None:
    """The multi-row path (AVX-512: tiled; AVX2: two-pass) and the row-at-a-time path (its reference
    twin) agree with each other and with torch; on other machines both calls take the row path."""
    q, k, v, meta = _case(query_lens, ctx_lens, heads, block_size, seed=len(query_lens) + ctx_lens[0])
    scale = heads[2] ** -0.5
    ref = paged_attention_torch(q, k, v, meta, scale)
    tiled = cpu_attention.paged_attention(q, k, v, meta, scale, tiled_min_rows=1)
    rows = cpu_attention.paged_attention(q, k, v, meta, scale, tiled_min_rows=10**9)
    torch.testing.assert_close(tiled, ref, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(rows, ref, atol=2e-5, rtol=1e-5)


@pytest.mark.skipif(not cpu_attention.multi_row_supported(64), reason="no multi-row path on this CPU")
def test_multi_row_path_propagates_nan() -> None:
    q, k, v, meta = _case([6], [50], (4, 2, 64), 16, seed=3)
    q[2, 1, 5] = float("nan")  # token 2, query head 1
    out = cpu_attention.paged_attention(q, k, v, meta, 0.125, tiled_min_rows=1)
    assert torch.isnan(out[2, 1]).all()
    assert torch.isfinite(out[:, [0, 2, 3]]).all() and torch.isfinite(out[[0, 1, 3, 4, 5], 1]).all()


@pytest.mark.skipif(not cpu_attention.tiled_supported(64), reason="the tiled path needs AVX-512")
@pytest.mark.parametrize(
    ("query_lens", "ctx_lens", "heads"),
    [
        ([200], [200], (4, 2, 64)),  # a whole prompt: causal over itself, 13 row blocks per KV head
        ([100, 1, 40], [300, 77, 40], (4, 2, 64)),  # a chunk after a cached prefix, a decode row, a short prompt
        ([70], [90], (8, 1, 128)),
    ],
)
def test_prefill_chunks_run_on_the_tiled_path(query_lens: list[int], ctx_lens: list[int], heads: tuple[int, int, int]) -> None:
    q, k, v, meta = _case(query_lens, ctx_lens, heads, 16, seed=ctx_lens[0])
    scale = heads[2] ** -0.5
    assert cpu_attention.supports(q, k, meta)
    torch.testing.assert_close(cpu_attention.paged_attention(q, k, v, meta, scale), paged_attention_torch(q, k, v, meta, scale),
                               atol=2e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="need the tiled path"):
        cpu_attention.paged_attention(q, k, v, meta, scale, tiled_min_rows=10**9)


@pytest.mark.parametrize("heads", [(4, 2, 64), (6, 3, 24), (4, 1, 40)])  # multi-row paths where they run, and the row path
def test_a_row_does_not_depend_on_the_rows_computed_with_it(heads: tuple[int, int, int]) -> None:
    """Token t of a 17-row verification step equals, bitwise, the same token decoded alone: greedy
    speculative decoding then reproduces plain decoding exactly."""
    q, k, v, meta = _case([17], [300], heads, 16, seed=11)
    scale = heads[2] ** -0.5
    full = paged_attention(q, k, v, meta, scale)
    for t in (0, 5, 16):
        alone = AttentionMetadata.build([1], [300 - 16 + t], meta.block_table_lists, 16, "cpu")
        assert torch.equal(paged_attention(q[t : t + 1], k, v, alone, scale)[0], full[t]), t


@pytest.mark.parametrize("block_size", [16, 12])  # 12: the keys past a block's last multiple of 8
def test_a_row_does_not_depend_on_the_context_after_it(block_size: int) -> None:
    """A decode row with garbage (even NaN) in the unwritten slots of its last block, and the same
    row verified with drafts after it, equal each other bitwise (the multi-row paths compute a key's
    score by the key's place in its block, never by the context length)."""
    q, k, v, meta = _case([9], [300], (4, 2, 64), block_size, seed=4)
    scale = 0.125
    full = paged_attention(q, k, v, meta, scale)
    for t in (0, 3, 8):
        alone = AttentionMetadata.build([1], [300 - 8 + t], meta.block_table_lists, block_size, "cpu")
        k2, v2 = k.clone(), v.clone()
        last = meta.block_table_lists[0][(300 - 8 + t - 1) // block_size]
        k2[last, (300 - 8 + t) % block_size or block_size:] = float("nan")
        v2[last, (300 - 8 + t) % block_size or block_size:] = float("nan")
        assert torch.equal(paged_attention(q[t : t + 1], k2, v2, alone, scale)[0], full[t]), t


@pytest.mark.skipif(not cpu_attention.multi_row_supported(16), reason="no multi-row path on this CPU")
def test_greedy_tokens_of_the_multi_row_path_equal_the_row_paths(tiny_qwen, monkeypatch: pytest.MonkeyPatch) -> None:
    """The multi-row path rounds differently from its reference twin (the row path) but decodes the
    same greedy tokens."""
    from engine import LLM, SamplingParams

    g = torch.Generator().manual_seed(7)
    prompts = [torch.randint(2, 90, (n,), generator=g).tolist() for n in (5, 40, 90)]
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    opts = dict(device="cpu", dtype="float32", block_size=8, num_kv_blocks=128)
    fast = [o.token_ids for o in LLM(tiny_qwen, **opts).generate(prompts, params)]  # type: ignore[arg-type]
    monkeypatch.setattr(cpu_attention, "TILED_MIN_ROWS", 10**9)
    assert [o.token_ids for o in LLM(tiny_qwen, **opts).generate(prompts, params)] == fast  # type: ignore[arg-type]
