"""Fused FP4 Mixture-of-Experts in Triton: grouped GEMMs that read packed E2M1 weights and their
block scales and dequantise in registers.

Layout of the work (the shape of vLLM's fused_moe, written for this project's FP4 formats):

1. `align_by_expert` sorts the (token, slot) pairs by expert and pads each expert's run to a
   multiple of BLOCK_M, so every BLOCK_M-row block belongs to one expert (padding rows point at a
   sentinel pair and are masked).
2. `_gate_up_kernel`: for each row block and BLOCK_N slice of the intermediate dimension, multiply
   the rows' activations by the expert's gate and up rows of W13, dequantised tile by tile:
   the even-indexed K elements are the low nibbles, the odd ones the high nibbles, so the tile is
   two dots (even x low, odd x high) with no interleaving. SwiGLU (silu(gate) * up) is applied in
   registers and the [rows, I] result is written once.
3. `_down_kernel`: the same for W2 over that result, times each pair's router weight, written per
   pair; a torch `index_add_` then sums each token's top-k pairs (deterministic, no atomics).

Scales are decoded in the kernel from their stored bytes: NVFP4 block scales are FP8 E4M3 (bits),
times the FP32 second-level scale of their row (one per tensor, or per expert and projection for
ModelOpt checkpoints); MXFP4 scales are E8M0 biased exponents (255 = NaN).

Triton is imported lazily. Without CUDA the kernels run in Triton's interpreter when
TRITON_INTERPRET=1 is set before triton is first imported (how the tests run on CPU); loads are
cast to fp32 right after `tl.load` (bf16 arithmetic is wrong in the interpreter).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from engine.moe.fp4 import FP4Tensor
from engine.moe.quantized import QuantizedExperts
from engine.moe.routing import group_by_expert

BLOCK_M = 16


def align_by_expert(expert_ids: torch.Tensor, num_experts: int, block_m: int = BLOCK_M) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Sort (token, slot) pairs by expert, each expert's run padded to a multiple of `block_m`.

    Returns (sorted pair ids [num_padded] int64, padding = num_pairs (a sentinel, out of range);
    expert of each block [num_padded // block_m] int64; num_padded). Pair p is token p // top_k,
    slot p % top_k. Experts without pairs get no blocks.
    """
    if expert_ids.dim() != 2:
        raise ValueError(f"expert_ids must be [num_tokens, top_k], got shape {tuple(expert_ids.shape)}")
    num_pairs = expert_ids.numel()
    order, counts = group_by_expert(expert_ids, num_experts)
    padded = [-(-c // block_m) * block_m for c in counts]
    num_padded = sum(padded)
    sorted_ids = torch.full((num_padded,), num_pairs, dtype=torch.long, device=expert_ids.device)
    block_expert = torch.empty(num_padded // block_m, dtype=torch.long, device=expert_ids.device)
    src = dst = 0
    for e, (c, p) in enumerate(zip(counts, padded, strict=True)):
        if c:
            sorted_ids[dst : dst + c] = order[src : src + c]
            block_expert[dst // block_m : (dst + p) // block_m] = e
        src += c
        dst += p
    return sorted_ids, block_expert, num_padded


@functools.cache
def _kernels() -> tuple[Any, Any]:
    from engine.moe import triton_kernels

    return triton_kernels._gate_up_kernel, triton_kernels._down_kernel


def _scale_bytes(t: FP4Tensor) -> torch.Tensor:
    """The stored scale bytes as uint8 (E4M3 bits for NVFP4, biased exponents for MXFP4)."""
    return t.scales.view(torch.uint8) if t.scales.dtype != torch.uint8 else t.scales


def fused_moe_fp4(
    x: torch.Tensor, weights: torch.Tensor, expert_ids: torch.Tensor, experts: QuantizedExperts,
    block_n: int = 32, block_k: int = 64,
) -> torch.Tensor:
    """Router-weighted sum of each token's top-k FP4 experts. x [T, H] (fp32/bf16/fp16),
    weights/expert_ids [T, k] -> [T, H] in x's dtype. Raises ValueError on inconsistent shapes."""
    num_tokens, hidden = x.shape
    if weights.shape != expert_ids.shape or weights.shape[0] != num_tokens:
        raise ValueError(f"weights {tuple(weights.shape)} and expert_ids {tuple(expert_ids.shape)} must both be [{num_tokens}, top_k]")
    w13, w2 = experts.w13, experts.w2
    e, two_i, h = w13.shape
    inter = two_i // 2
    if h != hidden or tuple(w2.shape) != (e, hidden, inter):
        raise ValueError(f"expert shapes w13 {w13.shape} / w2 {w2.shape} do not fit hidden size {hidden}")
    if hidden % w13.block or inter % w13.block:
        raise ValueError(f"hidden {hidden} and intermediate {inter} must be multiples of the {w13.fmt} block {w13.block}")
    if block_k < 32 or block_k % 32:
        raise ValueError(f"block_k must be a positive multiple of 32 (two 16-wide dot halves), got {block_k}")
    if num_tokens == 0:
        return torch.zeros_like(x)
    gate_up, down = _kernels()
    top_k = expert_ids.shape[1]
    sorted_ids, block_expert, num_padded = align_by_expert(expert_ids, e, BLOCK_M)
    xc = x.contiguous()
    act = torch.empty(num_padded, inter, dtype=torch.float32, device=x.device)
    s13, s2 = _scale_bytes(w13), _scale_bytes(w2)
    p13, p2 = w13.packed, w2.packed
    nvfp4 = w13.fmt == "nvfp4"
    grid1 = (num_padded // BLOCK_M, -(-inter // block_n))
    rs13, rs2 = w13.row_scales().to(x.device), w2.row_scales().to(x.device)  # [E, 2I], [E, H]
    gate_up[grid1](
        xc, p13, s13, rs13, act, sorted_ids, block_expert, expert_ids.numel(), hidden, inter, top_k,
        xc.stride(0), p13.stride(0), p13.stride(1), s13.stride(0), s13.stride(1), act.stride(0),
        BLOCK_M=BLOCK_M, BLOCK_N=block_n, BLOCK_K=block_k, FMT_BLOCK=w13.block, IS_NVFP4=nvfp4,
    )
    per_pair = torch.zeros(expert_ids.numel(), hidden, dtype=torch.float32, device=x.device)
    topk_w = weights.reshape(-1).float().contiguous()
    grid2 = (num_padded // BLOCK_M, -(-hidden // block_n))
    down[grid2](
        act, p2, s2, rs2, per_pair, sorted_ids, block_expert, topk_w, expert_ids.numel(), hidden, inter,
        act.stride(0), p2.stride(0), p2.stride(1), s2.stride(0), s2.stride(1), per_pair.stride(0),
        BLOCK_M=BLOCK_M, BLOCK_N=block_n, BLOCK_K=block_k, FMT_BLOCK=w2.block, IS_NVFP4=nvfp4,
    )
    token_of_pair = torch.arange(expert_ids.numel(), device=x.device) // top_k
    out = torch.zeros(num_tokens, hidden, dtype=torch.float32, device=x.device).index_add_(0, token_of_pair, per_pair)
    return out.to(x.dtype)
