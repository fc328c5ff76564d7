"""The torch MoE expert computation (the reference every faster path is tested against).

Experts are SwiGLU MLPs with stacked weights: w13 [E, 2*I, H] (gate rows then up rows), w2 [E, H, I].
Only experts that received tokens run; each runs on the contiguous slice of its tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.moe.routing import group_by_expert


def swiglu(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """One expert on its tokens: x [n, H] -> [n, H]."""
    gate, up = F.linear(x, w13).chunk(2, dim=-1)
    return F.linear(F.silu(gate) * up, w2)


def moe_experts(
    x: torch.Tensor, weights: torch.Tensor, expert_ids: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor
) -> torch.Tensor:
    """Router-weighted sum of each token's top-k experts. x [T, H], weights/ids [T, k] -> [T, H].

    Differentiable (used for training as well as serving).
    """
    num_tokens, top_k = expert_ids.shape
    order, counts = group_by_expert(expert_ids, w13.shape[0])
    token_of_pair = order // top_k  # [T*k] tokens sorted by expert
    pair_weights = weights.flatten()[order].to(x.dtype)  # [T*k]
    out = torch.zeros_like(x)
    start = 0
    for expert, n in enumerate(counts):
        if n == 0:
            continue
        idx = token_of_pair[start : start + n]
        y = swiglu(x.index_select(0, idx), w13[expert], w2[expert]) * pair_weights[start : start + n, None]
        out = out.index_add(0, idx, y) if out.requires_grad or y.requires_grad else out.index_add_(0, idx, y)
        start += n
    return out
