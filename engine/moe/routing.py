"""Top-k softmax routing and the token grouping the expert computation needs."""

from __future__ import annotations

import torch


def route(router_logits: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over all experts (fp32), keep the top-k; optionally renormalise the kept weights.

    Returns (weights [num_tokens, top_k] fp32, expert ids [num_tokens, top_k] int64). Softmax then
    renormalised top-k equals Mixtral's softmax over the top-k logits.
    """
    probs = torch.softmax(router_logits.float(), dim=-1)  # [num_tokens, num_experts]
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids


def group_by_expert(expert_ids: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, list[int]]:
    """Sort the (token, slot) pairs by expert.

    Returns (order [num_tokens * top_k]: flat pair indices sorted by expert, counts per expert as
    a host list). Pair p belongs to token p // top_k.
    """
    flat = expert_ids.flatten()
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=num_experts).tolist()
    return order, counts
