"""The torch MoE expert computation (the reference every faster path is tested against).

Experts are SwiGLU MLPs with stacked weights: w13 [E, 2*I, H] (gate rows then up rows), w2 [E, H, I].
Only experts that received tokens run; each runs on the contiguous slice of its tokens.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from engine.kernels.activation import ClampedGlu, expert_glu
from engine.moe.routing import group_by_expert


def swiglu(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """One expert on its tokens: x [n, H] -> [n, H]."""
    gate, up = F.linear(x, w13).chunk(2, dim=-1)
    return F.linear(F.silu(gate) * up, w2)


SMALL_BATCH_PAIRS = 8


def _moe_small(x: torch.Tensor, weights: torch.Tensor, expert_ids: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """Decode-sized batches: one host sync for the ids, then each active expert on its rows."""
    ids = expert_ids.tolist()
    rows: dict[int, list[int]] = {}
    for t, row in enumerate(ids):
        for e in row:
            rows.setdefault(e, []).append(t)
    w = weights.to(x.dtype)
    out = torch.zeros_like(x)
    for e, tokens in rows.items():
        sel = [ids[t].index(e) for t in tokens]
        if len(tokens) == x.shape[0] == 1:
            out += swiglu(x, w13[e], w2[e]) * w[0, sel[0]]
            continue
        idx = torch.tensor(tokens, device=x.device)
        y = swiglu(x.index_select(0, idx), w13[e], w2[e]) * w[idx, torch.tensor(sel, device=x.device)][:, None]
        out.index_add_(0, idx, y)
    return out


PADDED_MAX_TOKENS = 64


def _moe_padded(
    x: torch.Tensor, weights: torch.Tensor, order: torch.Tensor, counts: list[int], top_k: int,
    w13: torch.Tensor, w2: torch.Tensor,
) -> torch.Tensor:
    """Decode batches where most experts are hit: every expert's tokens are padded to the same
    count and all experts run as one batched matmul, which reads each weight once and spreads the
    (memory-bound) work over all cores."""
    num_experts, max_n = w13.shape[0], max(counts)
    counts_t = torch.tensor(counts, device=x.device)
    starts = torch.cumsum(counts_t, 0) - counts_t
    expert_of_pair = torch.repeat_interleave(torch.arange(num_experts, device=x.device), counts_t)
    slot = expert_of_pair * max_n + torch.arange(order.shape[0], device=x.device) - starts[expert_of_pair]
    token_of_pair = order // top_k
    xp = x.new_zeros(num_experts * max_n, x.shape[1])
    xp[slot] = x.index_select(0, token_of_pair)
    gate, up = torch.bmm(xp.view(num_experts, max_n, -1), w13.transpose(1, 2)).chunk(2, dim=-1)
    y = torch.bmm(F.silu(gate) * up, w2.transpose(1, 2)).view(num_experts * max_n, -1)  # [E*max_n, H]
    y = y.index_select(0, slot) * weights.flatten()[order].to(x.dtype)[:, None]
    return torch.zeros_like(x).index_add_(0, token_of_pair, y)


def moe_experts(
    x: torch.Tensor, weights: torch.Tensor, expert_ids: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor
) -> torch.Tensor:
    """Router-weighted sum of each token's top-k experts. x [T, H], weights/ids [T, k] -> [T, H].

    Differentiable (used for training as well as serving).
    """
    num_tokens, top_k = expert_ids.shape
    if num_tokens * top_k <= SMALL_BATCH_PAIRS and not torch.is_grad_enabled():
        return _moe_small(x, weights, expert_ids, w13, w2)
    if num_tokens <= PADDED_MAX_TOKENS and not torch.is_grad_enabled():
        order, counts = group_by_expert(expert_ids, w13.shape[0])
        return _moe_padded(x, weights, order, counts, top_k, w13, w2)
    return moe_grouped(x, weights, expert_ids, w13.shape[0], lambda e: (w13[e], w2[e]))


def moe_grouped(
    x: torch.Tensor, weights: torch.Tensor, expert_ids: torch.Tensor, num_experts: int,
    expert_weights: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    """Tokens grouped by expert; each active expert runs on its contiguous group with the weights
    `expert_weights(e)` returns (dense slices, or dequantised FP4). Differentiable."""
    top_k = expert_ids.shape[1]
    order, counts = group_by_expert(expert_ids, num_experts)
    token_of_pair = order // top_k  # [T*k] tokens sorted by expert
    pair_weights = weights.flatten()[order].to(x.dtype)  # [T*k]
    out = torch.zeros_like(x)
    start = 0
    for expert, n in enumerate(counts):
        if n == 0:
            continue
        idx = token_of_pair[start : start + n]
        w13_e, w2_e = expert_weights(expert)
        y = swiglu(x.index_select(0, idx), w13_e, w2_e) * pair_weights[start : start + n, None]
        out = out.index_add(0, idx, y) if out.requires_grad or y.requires_grad else out.index_add_(0, idx, y)
        start += n
    return out


def moe_experts_glu(
    x: torch.Tensor, weights: torch.Tensor, expert_ids: torch.Tensor, glu: ClampedGlu,
    expert_weights: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    """`moe_grouped` for gpt-oss's biased clamped-GLU experts (engine/kernels/activation.py), in fp32;
    returns [T, H] in x's dtype. The twin of the C kernels' `ClampedGlu` path."""
    top_k = expert_ids.shape[1]
    order, counts = group_by_expert(expert_ids, glu.b13.shape[0])
    token_of_pair = order // top_k
    pair_weights = weights.flatten()[order].float()
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    start = 0
    for e, n in enumerate(counts):
        if n:
            idx = token_of_pair[start : start + n]
            y = expert_glu(x.index_select(0, idx), e, *expert_weights(e), glu)
            out.index_add_(0, idx, y * pair_weights[start : start + n, None])
        start += n
    return out.to(x.dtype)
