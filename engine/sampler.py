"""Token sampling: greedy, temperature, top-k, top-p, per-request seeds.

`sample` is batched over rows; a row whose request has a seed draws from its own generator, so
its tokens do not depend on what else is in the batch.
"""

from __future__ import annotations

import torch

from engine.sequence import SamplingParams


def apply_top_k_top_p(logits: torch.Tensor, top_k: int | None, top_p: float) -> torch.Tensor:
    """Mask (to -inf) every token outside the top-k and outside the smallest top-p nucleus.

    `logits` is [vocab] (already divided by the temperature). Ties at the k-th value are kept.
    """
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the mass strictly before it already reaches top_p (the top-1 always stays).
        drop = (torch.cumsum(probs, dim=-1) - probs) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(0, order, sorted_logits)
    return logits


def probabilities(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The distribution a request samples from: softmax of the filtered, tempered logits [vocab]."""
    scaled = logits.float() / params.temperature
    return torch.softmax(apply_top_k_top_p(scaled, params.top_k, params.top_p), dim=-1)


def sample(
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]
) -> list[int]:
    """Sample one token per row of `logits` [num_rows, vocab] (fp32)."""
    greedy = logits.argmax(dim=-1).tolist()
    out: list[int] = []
    for i, p in enumerate(params):
        if p.greedy:
            out.append(greedy[i])
            continue
        out.append(draw(probabilities(logits[i], p), generators[i]))
    return out


def draw(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    """One token from the distribution `probs` [vocab] by inverse-CDF: a single uniform draw
    against the cumulative sums (fp64), where `torch.multinomial` draws one exponential per
    vocabulary entry (~180 us for 8k tokens on the CPU). Zero-probability tokens are never chosen."""
    cdf = torch.cumsum(probs.detach().to("cpu", torch.float64), dim=0)
    u = torch.rand((), dtype=torch.float64, generator=generator) * cdf[-1]
    idx = int(torch.searchsorted(cdf, u, right=True))
    return idx if idx < probs.shape[0] else int(torch.searchsorted(cdf, cdf[-1]))  # u rounded up to the total
