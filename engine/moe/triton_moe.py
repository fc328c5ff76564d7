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
4. Split-K when the batch is small: a decode step has a handful of row blocks, too few programs to
   keep every SM streaming weight bytes, so the reduction dimension is split across a third grid
   axis (`split_k_for`); each slice writes fp32 partial sums, which torch adds up (deterministic,
   no atomics). For W13 the SwiGLU then runs on the summed gate and up columns.

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

from engine.kernels.activation import ClampedGlu, clamped_glu
from engine.kernels.fp4 import FP4Tensor
from engine.moe.quantized import QuantizedExperts
from engine.moe.routing import group_by_expert

BLOCK_M = 16


def align_by_expert_reference(expert_ids: torch.Tensor, num_experts: int, block_m: int = BLOCK_M) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The slow twin of `align_by_expert`: a host loop over experts (syncs with the device).

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


def max_padded_pairs(num_pairs: int, num_experts: int, block_m: int = BLOCK_M) -> int:
    """An upper bound on `align_by_expert`'s padded length known without looking at the routing:
    each expert that receives pairs adds at most block_m - 1 padding rows."""
    bound = num_pairs + min(num_experts, num_pairs) * (block_m - 1)
    return -(-bound // block_m) * block_m


def align_by_expert(expert_ids: torch.Tensor, num_experts: int, block_m: int = BLOCK_M) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort (token, slot) pairs by expert, each expert's run padded to a multiple of `block_m`,
    in a few tensor ops with no host sync (usable inside a CUDA graph).

    Returns (sorted pair ids [max_padded] int64, padding = num_pairs (a sentinel, out of range);
    expert of each block [max_padded // block_m] int64 (blocks past the end repeat the last
    expert); num_padded as a one-element device tensor). `max_padded = max_padded_pairs(...)`;
    only the first num_padded entries are meaningful and kernels skip the blocks past them.
    Agrees with `align_by_expert_reference` on that prefix.
    """
    if expert_ids.dim() != 2:
        raise ValueError(f"expert_ids must be [num_tokens, top_k], got shape {tuple(expert_ids.shape)}")
    device = expert_ids.device
    flat = expert_ids.reshape(-1)
    num_pairs = flat.numel()
    max_padded = max_padded_pairs(num_pairs, num_experts, block_m)
    counts = torch.zeros(num_experts, dtype=torch.long, device=device).index_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    ends = torch.cumsum(padded, 0)
    order = torch.argsort(flat, stable=True)
    expert_sorted = flat[order]
    rank = torch.arange(num_pairs, device=device) - (torch.cumsum(counts, 0) - counts)[expert_sorted]
    sorted_ids = torch.full((max_padded,), num_pairs, dtype=torch.long, device=device)
    sorted_ids[(ends - padded)[expert_sorted] + rank] = order
    block_starts = torch.arange(0, max_padded, block_m, device=device)
    block_expert = torch.searchsorted(ends, block_starts, right=True).clamp_(max=num_experts - 1)
    return sorted_ids, block_expert, ends[-1:]


MAX_SPLIT_K = 8


@functools.cache
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def split_k_for(programs: int, k: int, block_k: int, sm_count: int) -> int:
    """How many slices to split a reduction of length k into when a GEMM has only `programs`
    (row block x column tile) programs: enough to give every SM about two, at most MAX_SPLIT_K
    and at most one BLOCK_K tile per slice. 1 when the grid already fills the device."""
    if programs <= 0 or programs >= 2 * sm_count:
        return 1
    return max(1, min(MAX_SPLIT_K, -(-2 * sm_count // programs), -(-k // block_k)))


def _k_split(k: int, block_k: int, split: int) -> tuple[int, int]:
    """(slice length, a multiple of block_k; number of non-empty slices) for `split` slices."""
    tiles = -(-k // block_k)
    length = -(-tiles // split) * block_k
    return length, -(-k // length)


@functools.cache
def _kernels() -> tuple[Any, Any]:
    from engine.kernels.triton import moe_kernels as triton_kernels

    return triton_kernels._gate_up_kernel, triton_kernels._down_kernel


def _scale_bytes(t: FP4Tensor) -> torch.Tensor:
    """The stored scale bytes as uint8 (E4M3 bits for NVFP4, biased exponents for MXFP4)."""
    return t.scales.view(torch.uint8) if t.scales.dtype != torch.uint8 else t.scales


DenseExperts = tuple[torch.Tensor, torch.Tensor]
"""Dense expert weights (w13 [E, 2I, H], w2 [E, H, I]) in any float dtype and any strides."""


def fused_moe(
    x: torch.Tensor, weights: torch.Tensor, expert_ids: torch.Tensor, experts: QuantizedExperts | DenseExperts,
    block_n: int = 32, block_k: int = 64, num_warps: int = 4, num_stages: int = 2, swap_ab: bool = False,
    block_m: int = BLOCK_M, bf16_dequant: bool | None = None, split_k: int | None = None, glu: ClampedGlu | None = None,
) -> torch.Tensor:
    """Router-weighted sum of each token's top-k experts in two Triton grouped GEMMs, over packed
    FP4 experts (`QuantizedExperts`, dequantised in registers) or dense ones (a (w13, w2) pair).
    x [T, H] (fp32/bf16/fp16), weights/expert_ids [T, k] -> [T, H] in x's dtype.

    With bf16 activations on a GPU the tile products run on bf16 operands (tensor cores, fp32
    accumulation) and FP4 weights dequantise in bf16 (exact; `bf16_dequant=False` keeps fp32);
    otherwise on fp32 operands at IEEE precision. `split_k`: slices of the reduction dimension
    per GEMM (None: `split_k_for` on a GPU, 1 elsewhere). `glu`: gpt-oss's expert biases and
    clamped GLU (engine/kernels/activation.py) instead of SwiGLU. Raises ValueError on inconsistent shapes
    or tile sizes.
    """
    num_tokens, hidden = x.shape
    if weights.shape != expert_ids.shape or weights.shape[0] != num_tokens:
        raise ValueError(f"weights {tuple(weights.shape)} and expert_ids {tuple(expert_ids.shape)} must both be [{num_tokens}, top_k]")
    if isinstance(experts, QuantizedExperts):
        w13, w2 = experts.w13, experts.w2
        wfmt, fmt_block = (1 if w13.fmt == "nvfp4" else 2), w13.block
        p13, p2, s13, s2 = w13.packed, w2.packed, _scale_bytes(w13), _scale_bytes(w2)
        rs13, rs2 = experts.row_scales(x.device)
        k_stride13 = k_stride2 = 1
    else:
        p13, p2 = experts
        wfmt, fmt_block = 0, 1
        s13 = s2 = rs13 = rs2 = p13  # unused by the dense kernels
        k_stride13, k_stride2 = p13.stride(2), p2.stride(2)
    per_byte = 2 if wfmt else 1  # FP4 stores two elements per byte along the input dim
    e, two_i, h = p13.shape[0], p13.shape[1], p13.shape[2] * per_byte
    inter = two_i // 2
    w2_shape = (p2.shape[0], p2.shape[1], p2.shape[2] * per_byte)
    if h != hidden or w2_shape != (e, hidden, inter):
        raise ValueError(f"expert shapes w13 {(e, two_i, h)} / w2 {w2_shape} do not fit hidden size {hidden}")
    if wfmt and (hidden % fmt_block or inter % fmt_block):
        raise ValueError(f"hidden {hidden} and intermediate {inter} must be multiples of the FP4 block {fmt_block}")
    if block_k < 32 or block_k % 32 or block_k & (block_k - 1):
        raise ValueError(f"block_k must be a power of two >= 32 (two 16-wide dot halves), got {block_k}")
    if block_m < 16 or block_m & (block_m - 1) or block_n < 16 or block_n & (block_n - 1):
        raise ValueError(f"block_m and block_n must be powers of two >= 16, got {block_m}, {block_n}")
    if split_k is not None and split_k < 1:
        raise ValueError(f"split_k {split_k} must be >= 1")
    if glu is not None and (glu.b13.shape != (e, two_i) or glu.b2.shape != (e, hidden)):
        raise ValueError(f"expert biases b13 {tuple(glu.b13.shape)}, b2 {tuple(glu.b2.shape)} do not fit experts {(e, two_i, h)}")
    if num_tokens == 0:
        return torch.zeros_like(x)
    gate_up, down = _kernels()
    top_k = expert_ids.shape[1]
    num_pairs = expert_ids.numel()
    sorted_ids, block_expert, num_padded = align_by_expert(expert_ids, e, block_m)
    max_padded = sorted_ids.numel()
    dot_bf16 = x.is_cuda and x.dtype == torch.bfloat16
    xc = x.contiguous()
    topk_w = weights.reshape(-1).float().contiguous()
    b13, b2 = (glu.b13.float().contiguous(), glu.b2.float().contiguous()) if glu is not None else (topk_w, topk_w)  # unused without glu
    limit, alpha = (glu.limit, glu.alpha) if glu is not None else (0.0, 0.0)
    launch = {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "FMT_BLOCK": fmt_block, "WFMT": wfmt, "GLU": glu is not None,
              "DOT_BF16": dot_bf16, "SWAP_AB": swap_ab, "BF16_DEQUANT": dot_bf16 if bf16_dequant is None else bf16_dequant, "num_warps": num_warps, "num_stages": num_stages}
    grid_m = max_padded // block_m
    sms = _sm_count(x.device) if x.is_cuda else 0
    k13, s13_n = _k_split(hidden, block_k, split_k or split_k_for(grid_m * -(-inter // block_n), hidden, block_k, sms))
    act_dtype = torch.bfloat16 if dot_bf16 else torch.float32
    act = torch.empty(s13_n, max_padded, two_i, dtype=torch.float32, device=x.device) if s13_n > 1 else torch.empty(max_padded, inter, dtype=act_dtype, device=x.device)
    gate_up[(grid_m, -(-inter // block_n), s13_n)](
        xc, p13, s13, rs13, act, sorted_ids, block_expert, num_padded, b13, num_pairs, hidden, inter, top_k, k13, limit, alpha,
        xc.stride(0), p13.stride(0), p13.stride(1), k_stride13, s13.stride(0), s13.stride(1), act.stride(0), act.stride(-2),
        SPLIT=s13_n > 1, **launch,
    )
    if s13_n > 1:
        act = _activate_sums(act.sum(0), sorted_ids, expert_ids, block_m, glu).to(act_dtype)
    k2, s2_n = _k_split(inter, block_k, split_k or split_k_for(grid_m * -(-hidden // block_n), inter, block_k, sms))
    per_pair = torch.empty(s2_n, num_pairs, hidden, dtype=torch.float32, device=x.device)
    down[(grid_m, -(-hidden // block_n), s2_n)](
        act, p2, s2, rs2, per_pair, sorted_ids, block_expert, num_padded, topk_w, b2, num_pairs, hidden, inter, k2,
        act.stride(0), p2.stride(0), p2.stride(1), k_stride2, s2.stride(0), s2.stride(1), per_pair.stride(0), per_pair.stride(1),
        SPLIT=s2_n > 1, **launch,
    )
    per_pair = per_pair.sum(0) if s2_n > 1 else per_pair[0]
    return per_pair.view(num_tokens, top_k, hidden).sum(1).to(x.dtype)


def _activate_sums(h: torch.Tensor, sorted_ids: torch.Tensor, expert_ids: torch.Tensor, block_m: int,
                   glu: ClampedGlu | None) -> torch.Tensor:
    """Split-K's activation on the summed gate/up columns h [max_padded, 2I]: SwiGLU, or with
    `glu` each row's expert biases and the clamped GLU (padding rows get expert 0's; never read)."""
    if glu is None:
        gate, up = h.chunk(2, dim=1)
        return torch.nn.functional.silu(gate) * up
    flat = expert_ids.reshape(-1)
    expert_of_row = flat[sorted_ids.clamp(max=flat.numel() - 1)] * (sorted_ids < flat.numel())
    return clamped_glu(h + glu.b13.float()[expert_of_row], glu.limit, glu.alpha)


def fused_moe_fp4(
    x: torch.Tensor, weights: torch.Tensor, expert_ids: torch.Tensor, experts: QuantizedExperts,
    block_n: int = 32, block_k: int = 64,
) -> torch.Tensor:
    """`fused_moe` over packed FP4 experts (kept for callers that name the format)."""
    return fused_moe(x, weights, expert_ids, experts, block_n=block_n, block_k=block_k)
