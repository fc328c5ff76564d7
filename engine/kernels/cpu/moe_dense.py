"""A whole dense MoE layer in one C call (the CPU serving path, decode to prefill).

Why: through torch a MoE layer is a dozen small ops per active expert (index, two matmuls, SwiGLU,
scale, scatter-add) whose fixed costs exceed the arithmetic at decode-sized batches, and whose
matmuls BLAS runs at a fraction of the FMA rate when an expert has a few rows. This driver runs
the layer on the panel kernel of `kernels/cpu/linear.py` (panel.h) in one OpenMP region:
  1. sort the (token, slot) pairs by expert and gather their rows;
  2. per (expert, gate/up panel): 8 gate and the 8 matching up columns, SwiGLU in registers;
  3. per (expert, down panel): the expert's rows of the down projection;
  4. per token: the router-weighted sum of its k expert outputs, in slot order.
Each routed expert's weights are read once per step, every phase splits its panels between the
threads, and the sum order is fixed, so a token's output does not depend on the batch around it.

Expert weights are packed once (`DenseExperts`) as panels: bf16 when that is lossless (checkpoints
shipped in bf16, like the embedded model: half the bytes to stream), else fp32. The intermediate
size is padded to a multiple of 8 with zero rows/columns, which contribute exactly 0.
`moe/reference.moe_experts` is the oracle (tests/engine/moe/test_cpu_dense.py).

gpt-oss's experts (`glu`: engine/kernels/activation.py) add biases and a clamped GLU: step 2 then writes
the plain gate/up sums, a pass over them adds the biases and applies the clamped GLU in registers,
and step 4 adds each expert's down bias; `moe/reference.moe_experts_glu` is that path's oracle. Built on first use
by `kernels.cpu.native`; without a C compiler `available()` is False and the torch path runs.
"""

from __future__ import annotations

import torch

from engine.kernels.activation import ClampedGlu
from engine.kernels.cpu import linear as cpu_linear
from engine.kernels.cpu import native

# The MoE driver's shared steps (moe_driver.h; this module's dense layer and fp4_panels' FP4 layer use them).

_P, _I, _F = native.PTR, native.I64, native.F32
_SIGNATURES = (("dense_moe", (_P, _I, _I, _I, _I, _P, _P, _P, _P, _I, _I, _P, _P, _P, _I, _P, _P, _F, _F, _P), _I),)


_KERNELS = native.Kernels("moe_dense", _SIGNATURES)


def available() -> bool:
    """Whether the compiled kernel can be used (builds it on the first call)."""
    return _KERNELS.available()


class PanelGlu:
    """A `ClampedGlu` in the kernels' layout: b13 as [E, 2 IP] in gate/up panel column order (per
    panel j: gate biases 8j..8j+7, then the matching up biases; zero padding), b2 [E, H], fp32."""

    def __init__(self, glu: ClampedGlu, padded: int) -> None:
        e, two_i = glu.b13.shape
        inter = two_i // 2
        gate_up = torch.zeros(e, 2, padded)
        gate_up[:, :, :inter] = glu.b13.detach().float().view(e, 2, inter)
        self.b13 = gate_up.view(e, 2, padded // 8, 8).transpose(1, 2).reshape(e, 2 * padded).contiguous()
        self.b2 = glu.b2.detach().float().contiguous()
        self.limit, self.alpha = glu.limit, glu.alpha

    def args(self) -> tuple[int, int, float, float]:
        """The kernels' trailing arguments (b13, b2, limit, alpha)."""
        return self.b13.data_ptr(), self.b2.data_ptr(), self.limit, self.alpha


def glu_args(glu: PanelGlu | None) -> tuple[int | None, int | None, float, float]:
    """The kernels' trailing arguments for `glu`, or for plain SwiGLU (NULL biases)."""
    return glu.args() if glu is not None else (None, None, 0.0, 0.0)


class DenseExperts:
    """Kernel copies of a MoE layer's expert weights (w13 [E, 2I, H]: gate rows then up rows;
    w2 [E, H, I]) packed as panels, bf16 when that is lossless for both, else fp32:
    w13 -> [E, ceil(I/8), H, 16] (8 gate columns, then the same 8 up columns),
    w2 -> [E, ceil(H/16), IP, 16] with IP = I rounded up to 8 (zero columns).
    `glu`: gpt-oss's biases and clamped GLU instead of plain SwiGLU."""

    def __init__(self, w13: torch.Tensor, w2: torch.Tensor, glu: ClampedGlu | None = None) -> None:
        if w13.dim() != 3 or w2.dim() != 3 or w13.shape[0] != w2.shape[0] or w13.shape[1] != 2 * w2.shape[2] or w13.shape[2] != w2.shape[1]:
            raise ValueError(f"expert weights do not belong together: w13 {tuple(w13.shape)}, w2 {tuple(w2.shape)}")
        if w13.device.type != "cpu" or w2.device.type != "cpu":
            raise ValueError("DenseExperts hold CPU tensors")
        e, two_i, h = w13.shape
        inter = two_i // 2
        padded = -(-inter // 8) * 8
        dtype = torch.bfloat16 if cpu_linear.lossless_bf16(w13) and cpu_linear.lossless_bf16(w2) else torch.float32
        gate_up = torch.zeros(e, 2, padded, h)
        gate_up[:, :, :inter] = w13.detach().float().view(e, 2, inter, h)
        # rows of panel j: gate rows 8j..8j+8, then up rows 8j..8j+8
        interleaved = gate_up.view(e, 2, padded // 8, 8, h).transpose(1, 2).reshape(e, 2 * padded, h)
        down = torch.zeros(e, h, padded)
        down[:, :, :inter] = w2.detach().float()
        self.w13 = cpu_linear.pack(interleaved, dtype)
        self.w2 = cpu_linear.pack(down, dtype)
        self.num_experts, self.hidden, self.inter, self.inter_padded = e, h, inter, padded
        if glu is not None and (glu.b13.shape != (e, 2 * inter) or glu.b2.shape != (e, h)):
            raise ValueError(f"expert biases b13 {tuple(glu.b13.shape)}, b2 {tuple(glu.b2.shape)} do not fit experts {tuple(w13.shape)}")
        self.glu = PanelGlu(glu, padded) if glu is not None else None

    @property
    def bf16(self) -> bool:
        return self.w13.dtype == torch.bfloat16

    def run(self, x: torch.Tensor, weights: torch.Tensor, expert_ids: torch.Tensor) -> torch.Tensor:
        """The layer on these experts: `dense_moe(x, weights, expert_ids, self)`."""
        return dense_moe(x, weights, expert_ids, self)

    def unpacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The expert weights as fp32 (w13 [E, 2I, H], w2 [E, H, I]): for code that needs the
        plain layout after packing freed it (inspection, tests)."""
        e, h, i, ip = self.num_experts, self.hidden, self.inter, self.inter_padded
        gate_up = cpu_linear.unpack(self.w13, 2 * ip).view(e, ip // 8, 2, 8, h).transpose(1, 2).reshape(e, 2, ip, h)
        w13 = gate_up[:, :, :i].reshape(e, 2 * i, h)
        w2 = cpu_linear.unpack(self.w2, h)[:, :, :i]
        return w13.contiguous(), w2.contiguous()


def dense_moe(x: torch.Tensor, weights: torch.Tensor, expert_ids: torch.Tensor, experts: DenseExperts) -> torch.Tensor:
    """A whole MoE layer: x [T, H], router weights/expert ids [T, k] -> [T, H] in x's dtype.

    Raises ValueError for non-CPU tensors or bad shapes/ids, KernelUnavailableError if the kernel is not available."""
    lib = _KERNELS.require()
    num_tokens, hidden = x.shape
    if x.device.type != "cpu":
        raise ValueError(f"dense_moe takes CPU tensors, got {x.device}")
    if hidden != experts.hidden:
        raise ValueError(f"x has hidden size {hidden}, the experts {experts.hidden}")
    if expert_ids.shape != weights.shape or expert_ids.dim() != 2 or expert_ids.shape[0] != num_tokens:
        raise ValueError(f"router weights {tuple(weights.shape)} and expert ids {tuple(expert_ids.shape)} must both be [{num_tokens}, k]")
    e = experts.num_experts
    ids = expert_ids if expert_ids.dtype == torch.int64 and expert_ids.is_contiguous() else expert_ids.to(torch.int64).contiguous()
    xc = x if x.dtype == torch.float32 and x.is_contiguous() else x.float().contiguous()
    topw = weights if weights.dtype == torch.float32 and weights.is_contiguous() else weights.float().contiguous()
    pairs = ids.numel()
    out = torch.empty(num_tokens, hidden, dtype=torch.float32)
    scratch = torch.empty(pairs * (2 * hidden + experts.inter_padded * (3 if experts.glu else 1)), dtype=torch.float32)
    iscratch = torch.empty(2 * pairs + 3 * e + 1, dtype=torch.int64)
    status = lib.dense_moe(xc.data_ptr(), num_tokens, hidden, experts.inter_padded, ids.shape[1], ids.data_ptr(), topw.data_ptr(),
                           experts.w13.data_ptr(), experts.w2.data_ptr(), int(experts.bf16), e, out.data_ptr(), scratch.data_ptr(),
                           iscratch.data_ptr(), torch.get_num_threads(), *glu_args(experts.glu), cpu_linear._KERNELS.tune or None)
    if status != 0:
        raise ValueError(f"expert ids must be in [0, {e})")
    return out if x.dtype == torch.float32 else out.to(x.dtype)
