"""Attention over the paged KV cache: the dispatcher (Triton decode and varlen kernels on CUDA, the C kernel for short rows on the CPU) and the torch path.

Shapes: q [num_tokens, num_heads, head_dim]; a layer's cache [num_blocks, block_size, num_kv_heads,
head_dim]. Grouped-query attention: query head h reads KV head h // (num_heads // num_kv_heads).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.kernels.cpu import attention as cpu_attention
from engine.kernels.triton.attention import decode_kernel_supports
from engine.kernels.triton.varlen_attention import varlen_kernel_supports
from engine.model.attention import AttentionMetadata


def write_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor) -> None:
    """Store new keys/values [num_tokens, num_kv_heads, head_dim] at their flat slots."""
    num_kv_heads, head_dim = k.shape[1], k.shape[2]
    k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slots, k)
    v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slots, v)


def gather_context(cache: torch.Tensor, block_table: torch.Tensor, length: int) -> torch.Tensor:
    """The first `length` cached vectors of one sequence: [length, num_kv_heads, head_dim]."""
    block_size = cache.shape[1]
    num_blocks = -(-length // block_size)
    return cache.index_select(0, block_table[:num_blocks]).flatten(0, 1)[:length]


MAX_RUNS = 8  # a context in more pieces than this is gathered instead
MAX_RUN_QUERIES = 32  # query rows per sequence up to which the no-copy path is used


def block_runs(table: list[int], num_blocks: int) -> list[tuple[int, int]]:
    """Split the first `num_blocks` entries of a block table into runs of consecutive block ids:
    [(first block, length)]. Freshly allocated blocks are consecutive (FIFO free list), so a
    sequence's context is usually a few runs, each a zero-copy view of the cache."""
    runs: list[tuple[int, int]] = []
    for b in table[:num_blocks]:
        if runs and runs[-1][0] + runs[-1][1] == b:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((b, 1))
    return runs


def attend_runs(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, runs: list[tuple[int, int]],
    ctx: int, scale: float,
) -> torch.Tensor:
    """Causal attention of a few new tokens q [n, Hq, D] (the last n of a context of `ctx`) over
    cache views, one per run, without gathering the context: scores per run, one softmax over
    their concatenation (exact), then the probability-weighted sum of each run's values. A single
    token (decode) goes to SDPA instead, which runs 1.8x faster on this CPU than the two bmm
    (strided cache views make torch's bmm slow; numbers in docs/architecture.md)."""
    n, num_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    if n == 1:  # one decode token: SDPA over the run views (strided, no copy) or, for several runs, their concatenation
        ks = [k_cache[b : b + m].view(m * block_size, num_kv_heads, head_dim) for b, m in runs]
        vs = [v_cache[b : b + m].view(m * block_size, num_kv_heads, head_dim) for b, m in runs]
        k = (ks[0] if len(ks) == 1 else torch.cat(ks))[:ctx].transpose(0, 1)  # [Hkv, ctx, D]
        v = (vs[0] if len(vs) == 1 else torch.cat(vs))[:ctx].transpose(0, 1)
        o = F.scaled_dot_product_attention(q.view(num_kv_heads, group, head_dim)[None], k[None], v[None], scale=scale)
        return o.view(1, num_heads, head_dim)
    qg = (q * scale).view(n, num_kv_heads, group, head_dim).permute(1, 0, 2, 3).reshape(num_kv_heads, n * group, head_dim)
    views = [(k_cache[b : b + m].view(m * block_size, num_kv_heads, head_dim),
              v_cache[b : b + m].view(m * block_size, num_kv_heads, head_dim)) for b, m in runs]
    parts = [torch.matmul(qg, k.permute(1, 2, 0)) for k, _ in views]
    scores = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)  # [Hkv, n*G, L]
    lo = ctx - n  # keys before the first new token are visible to every row: mask only the tail
    if scores.shape[-1] > ctx or n > 1:
        key_pos = torch.arange(lo, scores.shape[-1], device=q.device)
        q_pos = torch.arange(lo, ctx, device=q.device).repeat_interleave(group)  # row r = token r // G
        scores[..., lo:].masked_fill_(key_pos[None, :] > q_pos[:, None], float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    out = None
    start = 0
    for _, v in views:
        part = torch.matmul(probs[..., start : start + v.shape[0]], v.transpose(0, 1))  # [Hkv, n*G, D]
        out = part if out is None else out + part
        start += v.shape[0]
    assert out is not None
    return out.view(num_kv_heads, n, group, head_dim).permute(1, 0, 2, 3).reshape(n, num_heads, head_dim)


def paged_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata, scale: float,
    window: int = 0, sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of every new token over its sequence's cached context; [num_tokens, Hq, D].
    `window` > 0 limits each token to its last `window` keys; `sinks` [Hq] adds per-head sink logits
    to the softmax (gpt-oss); see `paged_attention_window_torch`."""
    if window or sinks is not None:
        if meta.tree_parents is not None:
            raise ValueError("token trees are not supported with a sliding window or sinks")
        if meta.is_decode and q.is_cuda and decode_kernel_supports(q.shape[-1]):
            from engine.kernels.triton.attention import paged_decode_attention

            return paged_decode_attention(q, k_cache, v_cache, meta.block_tables, meta.context_lens_t, scale,
                                          window=window, sinks=sinks)
        if q.is_cuda and varlen_kernel_supports(q.shape[-1]):
            return _varlen(q, k_cache, v_cache, meta, scale, window or None, sinks)
        if q.device.type == "cpu" and cpu_attention.supports(q, k_cache, meta, variant=True):
            return cpu_attention.paged_attention(q, k_cache, v_cache, meta, scale, window=window, sinks=sinks)
        return paged_attention_window_torch(q, k_cache, v_cache, meta, scale, window, sinks)
    if meta.tree_parents is not None:  # token trees: the two-pass C path, else the masked torch twin
        if q.device.type == "cpu" and cpu_attention.supports(q, k_cache, meta) and cpu_attention.tree_supported(q.shape[-1]):
            return cpu_attention.paged_attention(q, k_cache, v_cache, meta, scale, parents=meta.tree_parents)
        return paged_tree_attention_torch(q, k_cache, v_cache, meta, scale)
    if meta.is_decode and q.is_cuda and decode_kernel_supports(q.shape[-1]):  # sync-free (and CUDA-graph safe) decode
        from engine.kernels.triton.attention import paged_decode_attention

        return paged_decode_attention(q, k_cache, v_cache, meta.block_tables, meta.context_lens_t, scale)
    if q.is_cuda and varlen_kernel_supports(q.shape[-1]):  # prefill chunks and verification rows: one launch per step
        return _varlen(q, k_cache, v_cache, meta, scale)
    if q.device.type == "cpu" and cpu_attention.supports(q, k_cache, meta):  # decode, verification, prefill (AVX-512): C, from the blocks
        return cpu_attention.paged_attention(q, k_cache, v_cache, meta, scale)
    return paged_attention_torch(q, k_cache, v_cache, meta, scale)


def _varlen(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata, scale: float,
            window: int | None = None, sinks: torch.Tensor | None = None) -> torch.Tensor:
    """The step's rows (any query length per sequence) in one launch of the Triton varlen kernel."""
    from engine.kernels.triton.varlen_attention import varlen_paged_attention

    cu = meta.cu_query_lens_t
    if cu is None or cu.device != q.device:
        cu = torch.tensor(meta.cu_query_lens, dtype=torch.long, device=q.device)
    return varlen_paged_attention(q, k_cache, v_cache, meta.block_tables, meta.context_lens_t, cu, meta.max_query_len,
                                  scale, window=window, sinks=sinks)


def paged_attention_torch(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata, scale: float
) -> torch.Tensor:
    """`paged_attention` in torch ops only (prefill chunks, bf16 on the CPU, the C kernel's oracle)."""
    block_size = k_cache.shape[1]
    if meta.is_decode and meta.num_seqs > 1:
        return _decode(q, k_cache, v_cache, meta, scale)
    out = torch.empty_like(q)
    for i, (q_len, ctx) in enumerate(zip(meta.query_lens, meta.context_lens, strict=True)):
        lo, hi = meta.cu_query_lens[i], meta.cu_query_lens[i + 1]
        if q_len <= MAX_RUN_QUERIES:
            runs = block_runs(meta.block_table_lists[i], -(-ctx // block_size))
            if len(runs) <= MAX_RUNS:
                out[lo:hi] = attend_runs(q[lo:hi], k_cache, v_cache, runs, ctx, scale)
                continue
        k = gather_context(k_cache, meta.block_tables[i], ctx)  # [ctx, Hkv, D]
        v = gather_context(v_cache, meta.block_tables[i], ctx)
        out[lo:hi] = _causal(q[lo:hi], k, v, scale, ctx - q_len)
    return out


def tree_mask(parents: list[int], prefix: int) -> torch.Tensor:
    """[q_len, prefix + q_len] bool: new token t sees the `prefix` cached keys, itself and its
    ancestors (new token j's key at index prefix + j)."""
    q_len = len(parents)
    mask = torch.zeros(q_len, prefix + q_len, dtype=torch.bool)
    mask[:, :prefix] = True
    for t in range(q_len):
        j = t
        while j >= 0:
            mask[t, prefix + j] = True
            j = parents[j]
    return mask


def paged_tree_attention_torch(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata, scale: float
) -> torch.Tensor:
    """`paged_attention` with token trees (`AttentionMetadata.with_trees`) in torch ops: masked SDPA
    per tree sequence (the C two-pass path's reference twin); causal sequences as usual."""
    assert meta.tree_parent_lists is not None
    out = torch.empty_like(q)
    for i, (q_len, ctx) in enumerate(zip(meta.query_lens, meta.context_lens, strict=True)):
        lo, hi = meta.cu_query_lens[i], meta.cu_query_lens[i + 1]
        k = gather_context(k_cache, meta.block_tables[i], ctx)  # [ctx, Hkv, D]
        v = gather_context(v_cache, meta.block_tables[i], ctx)
        parents = meta.tree_parent_lists[i]
        if parents is None:
            out[lo:hi] = _causal(q[lo:hi], k, v, scale, ctx - q_len)
        else:
            out[lo:hi] = _masked(q[lo:hi], k, v, scale, tree_mask(parents, ctx - q_len).to(q.device))
    return out


def _masked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mask: torch.Tensor | None) -> torch.Tensor:
    """q [q_len, Hq, D] attends to k/v [ctx, Hkv, D] where mask [q_len, ctx] is True (None: causal
    from position 0)."""
    group = q.shape[1] // k.shape[1]
    qh = q.transpose(0, 1).unsqueeze(0)  # [1, Hq, q_len, D]
    kh = k.transpose(0, 1).repeat_interleave(group, 0).unsqueeze(0)  # [1, Hq, ctx, D]
    vh = v.transpose(0, 1).repeat_interleave(group, 0).unsqueeze(0)
    return F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, is_causal=mask is None, scale=scale)[0].transpose(0, 1)


def _causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, offset: int) -> torch.Tensor:
    """q [q_len, Hq, D] at absolute positions offset.. attends to k/v [ctx, Hkv, D] causally."""
    if offset == 0:
        return _masked(q, k, v, scale, None)
    q_pos = torch.arange(offset, offset + q.shape[0], device=q.device)
    return _masked(q, k, v, scale, torch.arange(k.shape[0], device=q.device)[None, :] <= q_pos[:, None])


def _decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    return _decode_padded(q, k_cache, v_cache, meta.block_tables, meta.context_lens_t, meta.max_context_len, scale)


def _decode_padded(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    context_lens: torch.Tensor, max_context_len: int, scale: float,
) -> torch.Tensor:
    """One new token per sequence: gather all contexts at once, padded to the longest."""
    num_seqs, num_heads, head_dim = q.shape
    num_kv_heads, block_size = k_cache.shape[2], k_cache.shape[1]
    max_blocks = -(-max_context_len // block_size)
    tables = block_tables[:, :max_blocks].flatten()
    k = k_cache.index_select(0, tables).view(num_seqs, max_blocks * block_size, num_kv_heads, head_dim).transpose(1, 2)
    v = v_cache.index_select(0, tables).view(num_seqs, max_blocks * block_size, num_kv_heads, head_dim).transpose(1, 2)
    group = num_heads // num_kv_heads
    qg = q.view(num_seqs, num_kv_heads, group, head_dim)  # the group's heads act as query rows
    positions = torch.arange(max_blocks * block_size, device=q.device)
    mask = (positions[None, :] < context_lens[:, None])[:, None, None, :]  # [B, 1, 1, L]
    o = F.scaled_dot_product_attention(qg, k, v, attn_mask=mask, scale=scale)  # [B, Hkv, G, D]
    return o.reshape(num_seqs, num_heads, head_dim)


def paged_attention_window_torch(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata, scale: float,
    window: int = 0, sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """`paged_attention` with a sliding window and/or attention sinks, in torch ops (the oracle of
    the kernels' variants). `window` > 0: a token at position p sees keys p - window + 1 .. p;
    `sinks` [Hq]: one learned logit per query head that joins each row's softmax denominator (and
    contributes no value)."""
    out = torch.empty_like(q)
    for i, (q_len, ctx) in enumerate(zip(meta.query_lens, meta.context_lens, strict=True)):
        lo, hi = meta.cu_query_lens[i], meta.cu_query_lens[i + 1]
        start = max(0, ctx - q_len - window + 1) if window else 0  # the first key any new row sees
        k = gather_context(k_cache, meta.block_tables[i], ctx)[start:]
        v = gather_context(v_cache, meta.block_tables[i], ctx)[start:]
        out[lo:hi] = attend_window(q[lo:hi], k, v, scale, ctx - q_len - start, window, sinks)
    return out


def attend_window(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, offset: int, window: int,
    sinks: torch.Tensor | None,
) -> torch.Tensor:
    """q [n, Hq, D] at positions offset .. offset + n - 1 of k/v [L, Hkv, D]: causal (and windowed)
    attention with optional per-head sink logits, computed in fp32; returns [n, Hq, D] in q's dtype."""
    n, num_heads, _ = q.shape
    group = num_heads // k.shape[1]
    kh = k.transpose(0, 1).float().repeat_interleave(group, 0)  # [Hq, L, D]
    vh = v.transpose(0, 1).float().repeat_interleave(group, 0)
    scores = torch.matmul(q.transpose(0, 1).float(), kh.transpose(1, 2)) * scale  # [Hq, n, L]
    q_pos = torch.arange(offset, offset + n, device=q.device)[:, None]
    k_pos = torch.arange(k.shape[0], device=q.device)[None, :]
    visible = k_pos <= q_pos
    if window:
        visible &= k_pos > q_pos - window
    scores = scores.masked_fill(~visible, float("-inf"))
    if sinks is not None:
        scores = torch.cat([scores, sinks.float()[:, None, None].expand(num_heads, n, 1)], dim=-1)
    probs = torch.softmax(scores, dim=-1)[..., : k.shape[0]]
    return torch.matmul(probs, vh).transpose(0, 1).to(q.dtype)
