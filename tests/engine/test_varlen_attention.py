"""The Triton varlen paged attention kernel against the torch paths (interpreter on CPU): prefill
chunks, verification rows and decode tokens in one step, GQA, sliding window and sinks."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from engine.kernels.triton.varlen_attention import varlen_paged_attention  # noqa: E402
from engine.model.attention import AttentionMetadata  # noqa: E402
from engine.model.paged_attention import gather_context, paged_attention_torch  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = 1e-4


def _step(query_lens: list[int], context_lens: list[int], block_size: int, heads: int, kv_heads: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    head_dim = 16
    need = sum(-(-c // block_size) for c in context_lens)
    perm = torch.randperm(need + 3, generator=g).tolist()  # fragmented tables
    tables, used = [], 0
    for c in context_lens:
        nb = -(-c // block_size)
        tables.append(perm[used : used + nb])
        used += nb
    k_cache = torch.randn(need + 3, block_size, kv_heads, head_dim, generator=g)
    v_cache = torch.randn(need + 3, block_size, kv_heads, head_dim, generator=g)
    q = torch.randn(sum(query_lens), heads, head_dim, generator=g)
    meta = AttentionMetadata.build(query_lens, context_lens, tables, block_size, "cpu")
    return q, k_cache, v_cache, meta


def _run(q, k_cache, v_cache, meta, window=None, sinks=None):
    scale = q.shape[-1] ** -0.5
    out = varlen_paged_attention(
        q.to(DEVICE), k_cache.to(DEVICE), v_cache.to(DEVICE), meta.block_tables.to(DEVICE), meta.context_lens_t.to(DEVICE),
        torch.tensor(meta.cu_query_lens, device=DEVICE), meta.max_query_len, scale, window=window,
        sinks=None if sinks is None else sinks.to(DEVICE),
    )
    return out.cpu()


def _dense(q, k_cache, v_cache, meta, window, sinks):
    """Per sequence, per head: softmax over the visible keys (and the sink logit), written out."""
    scale = q.shape[-1] ** -0.5
    out = torch.empty_like(q)
    group = q.shape[1] // k_cache.shape[2]
    for i, (q_len, ctx) in enumerate(zip(meta.query_lens, meta.context_lens, strict=True)):
        k = gather_context(k_cache, meta.block_tables[i], ctx).repeat_interleave(group, 1)  # [ctx, Hq, D]
        v = gather_context(v_cache, meta.block_tables[i], ctx).repeat_interleave(group, 1)
        rows = q[meta.cu_query_lens[i] : meta.cu_query_lens[i + 1]]
        s = torch.einsum("qhd,khd->hqk", rows, k) * scale
        pos = torch.arange(ctx - q_len, ctx)[:, None]
        key = torch.arange(ctx)[None, :]
        visible = (key <= pos) & ((key > pos - window) if window else True)
        s = s.masked_fill(~visible, float("-inf"))
        if sinks is not None:
            s = torch.cat([s, sinks[:, None, None].expand(-1, q_len, 1)], dim=-1)
        p = torch.softmax(s, dim=-1)[..., :ctx]
        out[meta.cu_query_lens[i] : meta.cu_query_lens[i + 1]] = torch.einsum("hqk,khd->qhd", p, v)
    return out


MIXED = ([5, 1, 3, 1], [5, 9, 20, 1])  # a whole prompt, decode, verification rows, a lone token


@pytest.mark.parametrize(("heads", "kv_heads", "block_size"), [(4, 2, 4), (6, 2, 8), (3, 3, 16)])
def test_mixed_step_equals_the_torch_path(heads: int, kv_heads: int, block_size: int) -> None:
    q, k_cache, v_cache, meta = _step(*MIXED, block_size, heads, kv_heads, seed=heads + block_size)
    ref = paged_attention_torch(q, k_cache, v_cache, meta, q.shape[-1] ** -0.5)
    torch.testing.assert_close(_run(q, k_cache, v_cache, meta), ref, atol=TOL, rtol=TOL)


def test_long_prefill_chunk_spans_several_tiles() -> None:
    q, k_cache, v_cache, meta = _step([19, 2], [30, 7], 4, 4, 1, seed=3)  # a chunk after 11 cached tokens
    ref = paged_attention_torch(q, k_cache, v_cache, meta, q.shape[-1] ** -0.5)
    torch.testing.assert_close(_run(q, k_cache, v_cache, meta), ref, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("window", [1, 3, 7])
def test_sliding_window_sees_only_the_last_keys(window: int) -> None:
    q, k_cache, v_cache, meta = _step([6, 1, 2], [21, 13, 4], 4, 4, 2, seed=window)
    ref = _dense(q, k_cache, v_cache, meta, window, None)
    torch.testing.assert_close(_run(q, k_cache, v_cache, meta, window=window), ref, atol=TOL, rtol=TOL)
    full = _dense(q, k_cache, v_cache, meta, None, None)
    assert not torch.allclose(ref, full, atol=1e-3)  # the window really cut keys off


def test_sinks_take_probability_mass() -> None:
    q, k_cache, v_cache, meta = _step([4, 1], [10, 6], 4, 4, 2, seed=11)
    sinks = torch.tensor([0.5, -1.0, 2.0, 0.0])
    ref = _dense(q, k_cache, v_cache, meta, None, sinks)
    torch.testing.assert_close(_run(q, k_cache, v_cache, meta, sinks=sinks), ref, atol=TOL, rtol=TOL)
    both = _dense(q, k_cache, v_cache, meta, 3, sinks)
    torch.testing.assert_close(_run(q, k_cache, v_cache, meta, window=3, sinks=sinks), both, atol=TOL, rtol=TOL)
    assert not torch.allclose(ref, _dense(q, k_cache, v_cache, meta, None, None), atol=1e-3)


def test_bad_arguments_raise() -> None:
    q, k_cache, v_cache, meta = _step([2], [2], 4, 2, 1, seed=0)
    with pytest.raises(ValueError, match="window 0"):
        _run(q, k_cache, v_cache, meta, window=0)
    with pytest.raises(ValueError, match="one per query head"):
        _run(q, k_cache, v_cache, meta, sinks=torch.zeros(3))


@pytest.mark.gpu
def test_cuda_dispatch_runs_prefill_and_verification_through_the_kernel_in_bf16() -> None:
    from engine.model.paged_attention import paged_attention

    q, k_cache, v_cache, cpu_meta = _step(*MIXED, 16, 8, 2, seed=5)
    meta = AttentionMetadata.build(MIXED[0], MIXED[1], cpu_meta.block_table_lists, 16, "cuda")
    assert meta.cu_query_lens_t is not None and meta.cu_query_lens_t.is_cuda
    qc, kc, vc = (x.to("cuda", torch.bfloat16) for x in (q, k_cache, v_cache))
    ref = paged_attention_torch(qc.float(), kc.float(), vc.float(), meta, 0.25)
    torch.testing.assert_close(paged_attention(qc, kc, vc, meta, 0.25).float(), ref, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("window", [0, 5])
@pytest.mark.parametrize("with_sinks", [False, True])
def test_varlen_kernel_agrees_with_the_engines_window_and_sink_reference(window: int, with_sinks: bool) -> None:
    """The kernel serves gpt-oss's layers on CUDA: same window convention and sink logits as the
    engine's torch oracle (engine.model.paged_attention.paged_attention_window_torch)."""
    from engine.model.paged_attention import paged_attention_window_torch

    q, k_cache, v_cache, meta = _step([4, 1, 9], [11, 6, 9], 4, 4, 2, seed=7)
    sinks = torch.randn(4, generator=torch.Generator().manual_seed(1)) if with_sinks else None
    want = paged_attention_window_torch(q, k_cache, v_cache, meta, q.shape[-1] ** -0.5, window, sinks)
    got = _run(q, k_cache, v_cache, meta, window=window or None, sinks=sinks)
    torch.testing.assert_close(got, want, atol=TOL, rtol=TOL)
