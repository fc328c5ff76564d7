"""Paged decode attention in Triton: one new token per sequence attends over its KV blocks, read
through its block table, with an online softmax. Every size it needs comes from device tensors
(context lengths, block tables), so a decode step runs with no host sync and can be captured in a
CUDA graph (engine/cuda_graphs.py).

One program per (sequence, KV head): the KV head's GROUP query heads are the rows of the tile, so
each K/V vector is read once for the whole group (grouped-query attention). The context is walked
BLOCK_N tokens at a time; token t lives at slot block_tables[seq, t // block_size] * block_size +
t % block_size of the flat cache.

Triton is imported lazily (`paged_decode_attention` imports the kernel module); in the interpreter
(TRITON_INTERPRET=1) bf16 loads are cast to fp32 right away. The torch twin is
paged_attention._decode_padded; tests/engine/test_triton_attention.py checks they agree.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from engine.kernels.triton import triton_available


def decode_kernel_supports(head_dim: int) -> bool:
    """Whether `paged_decode_attention` runs for this head size (a power of two >= 16)."""
    return head_dim >= 16 and not head_dim & (head_dim - 1) and triton_available()


@functools.cache
def _kernel() -> Any:
    from engine.kernels.triton import attention_kernels as triton_attention_kernels

    return triton_attention_kernels._paged_decode_kernel


def paged_decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    context_lens: torch.Tensor, scale: float, block_n: int = 64,
) -> torch.Tensor:
    """q [B, Hq, D] (one new token per sequence, its K/V already written) over caches
    [num_blocks, block_size, Hkv, D] -> [B, Hq, D]. block_tables [B, max_blocks] and
    context_lens [B] (>= 1) are device tensors. head_dim must be a power of two (>= 16). With a
    bf16 cache on a GPU the two products run on bf16 operands (fp32 accumulation)."""
    num_seqs, num_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    if head_dim < 16 or head_dim & (head_dim - 1) or num_heads % num_kv_heads:
        raise ValueError(f"head_dim {head_dim} must be a power of two >= 16 and {num_heads} heads a multiple of {num_kv_heads} KV heads")
    if k_cache.stride(2) != head_dim or k_cache.stride(3) != 1 or k_cache.stride(0) != block_size * k_cache.stride(1):
        raise ValueError("the KV cache must be contiguous per layer")
    group = num_heads // num_kv_heads
    out = torch.empty_like(q)
    if num_seqs == 0:
        return out
    bf16_dot = q.is_cuda and k_cache.dtype == torch.bfloat16
    group_pow2 = 1 << (group - 1).bit_length()
    # tensor-core dots need 16 rows; the fp32 path multiplies in registers, so keep its tiles small
    group_pad, block_n = (max(16, group_pow2), block_n) if bf16_dot else (group_pow2, min(block_n, 16))
    _kernel()[(num_seqs, num_kv_heads)](
        q, k_cache, v_cache, block_tables, context_lens, out, scale,
        q.stride(0), q.stride(1), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0), out.stride(0), out.stride(1),
        BLOCK_SIZE=block_size, GROUP=group, GROUP_PAD=group_pad, HEAD_DIM=head_dim, BLOCK_N=block_n, BF16_DOT=bf16_dot,
    )
    return out
