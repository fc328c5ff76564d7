"""Lossless acceptance of drafted tokens (Leviathan et al. 2023; Chen et al. 2023).

For draft token x_i proposed with probability q_i(x_i): accept with probability min(1, p_i(x_i) /
q_i(x_i)); at the first rejection emit a token sampled from normalise(max(0, p_i - q_i)); when all k
drafts are accepted emit a bonus token sampled from p_k. The emitted tokens are distributed exactly
as sampling from the target p one token at a time. Deterministic drafters have q = one-hot, so
acceptance is p_i(x_i) and the residual is p_i with x_i removed. At temperature 0, p is one-hot on
the argmax, so exactly the argmax prefix is accepted.

Vectorised over a batch whose requests have different numbers of drafts (padded with -1).
"""

from __future__ import annotations

import torch


def accept(
    target_probs: torch.Tensor, draft_ids: torch.Tensor, draft_probs: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Verify drafts against the target distribution.

    Args:
        target_probs: [batch, k + 1, vocab] target probabilities at each draft position and the bonus.
        draft_ids: [batch, k] int64, -1 where a request has fewer drafts.
        draft_probs: [batch, k, vocab] draft distributions; None = deterministic (one-hot) drafts.
    Returns:
        (num_accepted [batch], next_token [batch]): how many drafts were accepted and the token to
        emit after them (the correction at the first rejection, or the bonus token).
    """
    batch, k = draft_ids.shape
    valid = draft_ids >= 0  # [batch, k]
    ids = draft_ids.clamp(min=0)
    p_draft = target_probs[:, :k].gather(-1, ids.unsqueeze(-1)).squeeze(-1)  # [batch, k] p_i(x_i)
    q_draft = torch.ones_like(p_draft) if draft_probs is None else draft_probs.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    u = torch.rand(p_draft.shape, generator=generator, device=p_draft.device)
    ok = (u * q_draft < p_draft) & valid  # accept with probability min(1, p/q)
    num_accepted = torch.cumprod(ok.long(), dim=1).sum(dim=1)  # [batch] length of the accepted prefix
    rows = torch.arange(batch, device=target_probs.device)
    probs = target_probs[rows, num_accepted]  # [batch, vocab] distribution at the stop position
    rejected = num_accepted < valid.sum(dim=1)  # stopped at a rejection, not at the end of the drafts
    if bool(rejected.any()):
        pos = num_accepted.clamp(max=k - 1)
        q = _draft_dist(draft_probs, ids, rows, pos, probs.shape[-1])
        residual = (probs - q).clamp(min=0)
        residual = residual / residual.sum(-1, keepdim=True).clamp(min=1e-30)
        probs = torch.where(rejected[:, None], residual, probs)
    next_token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return num_accepted, next_token


def _draft_dist(draft_probs: torch.Tensor | None, ids: torch.Tensor, rows: torch.Tensor, pos: torch.Tensor, vocab: int) -> torch.Tensor:
    if draft_probs is not None:
        return draft_probs[rows, pos]
    return torch.nn.functional.one_hot(ids[rows, pos], vocab).to(torch.float32)


def accept_greedy(target_argmax: torch.Tensor, draft_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Temperature 0: accept drafts while they equal the target argmax; emit the argmax after them.

    target_argmax: [batch, k + 1]; draft_ids: [batch, k] (-1 padded)."""
    k = draft_ids.shape[1]
    ok = draft_ids == target_argmax[:, :k]
    num_accepted = torch.cumprod(ok.long(), dim=1).sum(dim=1)
    next_token = target_argmax.gather(1, num_accepted.unsqueeze(1)).squeeze(1)
    return num_accepted, next_token
