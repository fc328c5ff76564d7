"""Varlen paged attention in Triton: every sequence of a step brings any number of new query rows
(a prefill chunk, the rows of a speculative verification, one decode token) and attends causally
over its KV blocks, read through its block table, with an online softmax. One launch serves the
whole step: no per-sequence Python loop, no gathered copies of the context.

One program per (sequence, tile of BLOCK_M query tokens, KV head). The tile's rows are (token,
query head of the KV head's group), so each K/V vector loaded is shared by the GROUP query heads
(grouped-query attention) and by the BLOCK_M tokens. Row r of a sequence with q_len new tokens and
ctx cached+new tokens sits at position ctx - q_len + r and sees keys 0..position (causal limit);
with `window` it sees only the last `window` of those (sliding window: key > position - window);
with `sinks` [Hq] each head's softmax denominator gets one more term exp(sink) that carries no
value (attention sinks). Keys past the tile's last token and before its window are never read.

Sizes come from device tensors (cu_query_lens, context_lens, block tables) except the grid's
tile count (the step's longest query), so a step with a fixed row count per sequence (decode,
verification at one draft length) can be captured in a CUDA graph. In the interpreter
(TRITON_INTERPRET=1) loads are cast to fp32 right after tl.load. The torch twin is
engine/model/paged_attention.paged_attention_torch; tests/engine/test_varlen_attention.py checks
they agree.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch

from engine.kernels.triton import triton_available


def varlen_kernel_supports(head_dim: int) -> bool:
    """Whether `varlen_paged_attention` runs for this head size (a power of two >= 16)."""
    return head_dim >= 16 and not head_dim & (head_dim - 1) and triton_available()


@functools.cache
def _kernel() -> Any:
    from engine.kernels.triton import varlen_attention_kernels

    return varlen_attention_kernels._varlen_paged_kernel


def _tiles(group: int, max_query_len: int, on_gpu: bool) -> tuple[int, int, int]:
    """(GROUP_PAD, BLOCK_M, BLOCK_N): about 64 rows per tile on a GPU (at least 16, what a tensor-
    core dot needs), at most the step's longest query; small tiles in the interpreter."""
    group_pad = 1 << (group - 1).bit_length()
    longest = 1 << max(0, max_query_len - 1).bit_length()
    if not on_gpu:
        return group_pad, min(longest, max(1, 8 // group_pad)), 16
    block_m = min(longest, max(1, 64 // group_pad))
    block_m = max(block_m, -(-16 // group_pad))
    return group_pad, block_m, 64 if group_pad * block_m <= 64 else 32


def varlen_paged_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    context_lens: torch.Tensor, cu_query_lens: torch.Tensor, max_query_len: int, scale: float,
    window: int | None = None, sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """q [num_tokens, Hq, D] (sequence i owns rows cu_query_lens[i]:cu_query_lens[i+1], its K/V
    already written) over caches [num_blocks, block_size, Hkv, D] -> [num_tokens, Hq, D].
    block_tables [B, max_blocks], context_lens [B] and cu_query_lens [B + 1] are device tensors;
    max_query_len >= every sequence's query length. `window`: keys within the last `window`
    positions only; `sinks` [Hq]: one extra softmax logit per head."""
    num_tokens, num_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    if head_dim < 16 or head_dim & (head_dim - 1) or num_heads % num_kv_heads:
        raise ValueError(f"head_dim {head_dim} must be a power of two >= 16 and {num_heads} heads a multiple of {num_kv_heads} KV heads")
    if k_cache.stride(2) != head_dim or k_cache.stride(3) != 1 or k_cache.stride(0) != block_size * k_cache.stride(1):
        raise ValueError("the KV cache must be contiguous per layer")
    if window is not None and window < 1:
        raise ValueError(f"sliding window {window} must be >= 1 or None")
    if sinks is not None and sinks.shape != (num_heads,):
        raise ValueError(f"sinks of shape {tuple(sinks.shape)}: expected ({num_heads},), one per query head")
    if q.stride(2) != 1:
        q = q.contiguous()
    out = torch.empty_like(q)
    num_seqs = cu_query_lens.shape[0] - 1
    if num_tokens == 0 or num_seqs == 0 or max_query_len < 1:
        return out
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    group = num_heads // num_kv_heads
    group_pad, block_m, block_n = _tiles(group, max_query_len, q.is_cuda and not interpret)
    grid = (num_seqs, -(-max_query_len // block_m), num_kv_heads)
    _kernel()[grid](
        q, k_cache, v_cache, block_tables, context_lens, cu_query_lens, sinks if sinks is not None else q, out,
        scale, window or 0,
        q.stride(0), q.stride(1), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0), out.stride(0), out.stride(1),
        BLOCK_SIZE=block_size, GROUP=group, GROUP_PAD=group_pad, BLOCK_M=block_m, HEAD_DIM=head_dim, BLOCK_N=block_n,
        HAS_WINDOW=window is not None, HAS_SINKS=sinks is not None,
        FP32=interpret or k_cache.dtype == torch.float32,
    )
    return out
