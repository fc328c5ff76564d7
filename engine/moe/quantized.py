"""MoE experts with FP4 weights on the CPU path: weights stay packed (>= 3.5x smaller than bf16);
each step dequantises only the experts its tokens were routed to, then runs them in the compute
dtype. The torch reference (moe/reference.py) is the accuracy twin."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.kernels.fp4 import FP4Tensor, quantize
from engine.moe.reference import moe_grouped, swiglu
from engine.moe.routing import group_by_expert


class QuantizedExperts:
    """Stacked expert weights w13 [E, 2I, H] and w2 [E, H, I] quantised along their input dims."""

    _row_scales: tuple[str, tuple[torch.Tensor, torch.Tensor]] | None = None

    def __init__(self, w13: torch.Tensor, w2: torch.Tensor, fmt: str) -> None:
        self.fmt = fmt
        self.w13: FP4Tensor = quantize(w13.detach(), fmt)
        self.w2: FP4Tensor = quantize(w2.detach(), fmt)
        self.num_experts = w13.shape[0]

    @classmethod
    def from_fp4(cls, w13: FP4Tensor, w2: FP4Tensor) -> QuantizedExperts:
        """Wrap already-packed expert tensors (a pre-quantised checkpoint) without requantising."""
        if w13.fmt != w2.fmt or w13.shape[0] != w2.shape[0]:
            raise ValueError(f"w13 ({w13.fmt}, {w13.shape}) and w2 ({w2.fmt}, {w2.shape}) do not belong together")
        self = cls.__new__(cls)
        self.fmt, self.w13, self.w2, self.num_experts = w13.fmt, w13, w2, w13.shape[0]
        return self

    def to(self, device: torch.device | str) -> QuantizedExperts:
        """Move the packed tensors (and per-row scales) to `device`."""
        def move(t: FP4Tensor) -> FP4Tensor:
            ts = t.tensor_scale.to(device) if isinstance(t.tensor_scale, torch.Tensor) else t.tensor_scale
            return FP4Tensor(t.packed.to(device), t.scales.to(device), ts, t.fmt, t.shape)

        return QuantizedExperts.from_fp4(move(self.w13), move(self.w2))

    def row_scales(self, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """The second-level scale of every row of w13 [E, 2I] and w2 [E, H], fp32 on `device`
        (computed once; the fused kernel reads them every call)."""
        key = str(device)
        cached = self._row_scales
        if cached is None or cached[0] != key:
            cached = (key, (self.w13.row_scales().to(device), self.w2.row_scales().to(device)))
            self._row_scales = cached
        return cached[1]

    @property
    def nbytes(self) -> int:
        return self.w13.nbytes + self.w2.nbytes

    def expert(self, e: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return self.w13.select(e).dequantize(dtype), self.w2.select(e).dequantize(dtype)


def moe_experts_fp4(x: torch.Tensor, weights: torch.Tensor, expert_ids: torch.Tensor, experts: QuantizedExperts) -> torch.Tensor:
    """Like moe/reference.moe_experts, over packed FP4 experts. x [T, H] -> [T, H].

    On the CPU, experts that receive at most `cpu_fp4.MAX_ROWS` rows run the fused kernel
    (`kernels/cpu/fp4_matmul.py`: packed weights decoded in registers, no dense tile); the others, and every
    expert when the kernel is unavailable or gradients are needed, dequantise and use BLAS
    (`moe_experts_fp4_reference`, the test oracle)."""
    from engine.kernels.cpu import fp4_matmul as cpu_fp4

    if x.device.type != "cpu" or torch.is_grad_enabled() or not cpu_fp4.available():
        return moe_experts_fp4_reference(x, weights, expert_ids, experts)
    if x.shape[0] <= cpu_fp4.MAX_MOE_TOKENS and experts.w13.packed.is_contiguous() and experts.w2.packed.is_contiguous():
        return cpu_fp4.fp4_moe(x, weights, expert_ids, experts)  # the whole layer in one call
    top_k = expert_ids.shape[1]
    order, counts = group_by_expert(expert_ids, experts.num_experts)
    token_of_pair = order // top_k
    pair_weights = weights.flatten()[order].float()
    rs13, rs2 = experts.row_scales(x.device)
    inter = experts.w13.shape[1] // 2
    out = torch.zeros(x.shape, dtype=torch.float32)
    start = 0
    for e, n in enumerate(counts):
        if n == 0:
            continue
        idx = token_of_pair[start : start + n]
        xe = x.index_select(0, idx)
        if n <= cpu_fp4.MAX_ROWS:
            h = cpu_fp4.fp4_matmul(xe, experts.w13.select(e), rs13[e])  # [n, 2I]: gate then up
            y = cpu_fp4.fp4_matmul(F.silu(h[:, :inter]) * h[:, inter:], experts.w2.select(e), rs2[e])
        else:
            w13_e, w2_e = experts.expert(e, torch.float32)
            y = swiglu(xe.float(), w13_e, w2_e)
        out.index_add_(0, idx, y * pair_weights[start : start + n, None])
        start += n
    return out.to(x.dtype)


def moe_experts_fp4_reference(x: torch.Tensor, weights: torch.Tensor, expert_ids: torch.Tensor, experts: QuantizedExperts) -> torch.Tensor:
    """Dequantise each routed expert into a dense tile, then the grouped torch path."""
    return moe_grouped(x, weights, expert_ids, experts.num_experts, lambda e: experts.expert(e, x.dtype))

