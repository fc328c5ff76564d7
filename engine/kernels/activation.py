"""gpt-oss's expert activation: biased projections and a clamped GLU (the torch definition every
fused path is checked against).

    h = x @ W13^T + b13;  gate, up = h[:, :I], h[:, I:]   (engine layout: gate rows, then up rows)
    gate = min(gate, limit);  up = clamp(up, -limit, limit)
    y = ((up + 1) * gate * sigmoid(alpha * gate)) @ W2^T + b2
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class ClampedGlu:
    """The activation's parameters for a layer's experts: b13 [E, 2I] (gate then up), b2 [E, H]."""

    b13: torch.Tensor
    b2: torch.Tensor
    limit: float
    alpha: float

    def __post_init__(self) -> None:
        if self.b13.dim() != 2 or self.b2.dim() != 2 or self.b13.shape[0] != self.b2.shape[0] or self.b13.shape[1] % 2:
            raise ValueError(f"expert biases do not belong together: b13 {tuple(self.b13.shape)}, b2 {tuple(self.b2.shape)}")


def clamped_glu(h: torch.Tensor, limit: float, alpha: float) -> torch.Tensor:
    """h [n, 2I] (gate columns, then up columns) -> [n, I]."""
    gate, up = h.chunk(2, dim=-1)
    gate, up = gate.clamp(max=limit), up.clamp(-limit, limit)
    return (up + 1) * gate * torch.sigmoid(gate * alpha)


def expert_glu(x: torch.Tensor, e: int, w13: torch.Tensor, w2: torch.Tensor, glu: ClampedGlu) -> torch.Tensor:
    """Expert `e` (its weights w13 [2I, H], w2 [H, I]) on its rows x [n, H] -> [n, H], in fp32."""
    h = torch.nn.functional.linear(x.float(), w13.float(), glu.b13[e].float())
    return torch.nn.functional.linear(clamped_glu(h, glu.limit, glu.alpha), w2.float(), glu.b2[e].float())
