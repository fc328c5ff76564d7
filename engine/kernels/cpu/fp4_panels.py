"""A whole FP4 MoE layer at any batch in one C call, on 16-column FP4 panels (AVX-512).

Why: `fp4_matmul.fp4_moe` decodes each weight once per activation row (it walks rows inside
columns), so past a few rows it loses to dequantise + BLAS, and steps above 32 tokens (prefill
chunks, batched speculative verification) fell back to per-expert dequantisation. Here the
packed experts are re-laid out once as panels, like the dense driver's (`moe_dense`): a panel is
16 output columns; each pair of its K rows is 16 bytes (byte j holds column j of the first row in
the low nibble and of the second in the high one) and every block of B rows along K has 16 scale
bytes. Two K steps decode 32 weights in registers (a widening load, a mask and a shift, then a
permute of the 16-entry E2M1 table per row) and feed up to 5 activation rows x 2 panels of FMAs,
so the decode is shared by every row of the tile; a block's sums run unscaled and its scales
(decoded in registers from their E4M3/E8M0 bytes) multiply them at the block's end.
The per-row (ModelOpt) second-level scales multiply each column's sum at the end. The driver is
`moe_dense`'s: pairs sorted by expert, gate/up panels with SwiGLU, down panels, a per-token sum in
slot order (a token's output does not depend on its batch).

Memory: the panels hold exactly the packed bytes and scale bytes (H and I are multiples of the
FP4 block, so no panel needs padding), so FP4's size advantage is kept; the `QuantizedExperts` they were built from can be dropped.
`quantized.moe_experts_fp4_reference` (dequantise + torch) is the oracle
(tests/engine/moe/test_cpu_fp4_panels.py). Needs AVX-512 and a C compiler (`available()`).
"""

from __future__ import annotations

import torch

from engine.errors import KernelUnavailableError
from engine.kernels.activation import ClampedGlu
from engine.kernels.cpu import native
from engine.kernels.cpu.moe_dense import PanelGlu, glu_args
from engine.kernels.fp4 import FP4Experts, FP4Tensor

_P, _I, _F = native.PTR, native.I64, native.F32
_SIGNATURES = (
    ("fp4_panel_moe", (_P, _I, _I, _I, _I, _P, _P, _P, _P, _P, _P, _P, _P, _I, _I, _P, _P, _P, _I, _P, _P, _F, _F), _I),
    ("fp4_panels_supported", (), _I),
)


_KERNELS = native.Kernels("fp4_panels", _SIGNATURES)


def available() -> bool:
    """Whether the kernel can run here: it builds and was compiled with AVX-512."""
    lib = _KERNELS.get()
    return lib is not None and bool(lib.fp4_panels_supported())


def _panels(w: FP4Tensor, order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One stacked FP4 weight [E, N, K] -> (codes [E, P, K / 2, 16] uint8, scales [E, P, K / B, 16] uint8,
    row scales [E, P, 16] fp32), its rows taken in `order` (N entries) and cut into panels of 16."""
    e, _, k = w.shape
    codes = torch.stack([w.packed & 0x0F, w.packed >> 4], dim=-1).view(e, -1, k)[:, order]  # [E, N, K]
    p = order.numel() // 16
    codes = codes.view(e, p, 16, k // 2, 2).permute(0, 1, 3, 4, 2)  # [E, P, K / 2, 2, 16]
    packed = (codes[..., 0, :] | (codes[..., 1, :] << 4)).contiguous()  # [E, P, K / 2, 16]: rows 2i (low), 2i + 1 (high)
    blocks = w.scales.view(torch.uint8)[:, order].view(e, p, 16, -1).transpose(2, 3).contiguous()  # [E, P, K / B, 16]
    row_scales = w.row_scales().float().reshape(e, -1)[:, order].reshape(e, p, 16).contiguous()
    return packed, blocks, row_scales


class FP4PanelExperts:
    """A MoE layer's packed FP4 experts (`QuantizedExperts`) re-laid out as panels for the kernel:
    w13 (gate rows then up rows [E, 2I, H]) as I/8 panels of 8 gate + the matching 8 up columns,
    w2 [E, H, I] as H/16 panels. FP4 needs H and I to be multiples of its block (16 or 32), so no
    panel is partial. `glu`: gpt-oss's biases and clamped GLU (moe_dense.py). Raises ValueError when
    w13 and w2 (and the biases) do not belong together or are not on the CPU."""

    def __init__(self, experts: FP4Experts, glu: ClampedGlu | None = None) -> None:
        w13, w2 = experts.w13, experts.w2
        e, two_i, h = w13.shape
        inter = two_i // 2
        if w13.fmt != w2.fmt or w2.shape != (e, h, inter) or inter % w13.block or h % w13.block:
            raise ValueError(f"FP4 panels need matching experts with H and I multiples of {w13.block}: "
                             f"w13 {tuple(w13.shape)}, w2 {tuple(w2.shape)}")
        if w13.packed.device.type != "cpu":
            raise ValueError("FP4PanelExperts hold CPU tensors")
        gate = torch.arange(inter).view(-1, 8)  # panel j: gate rows 8j..8j+7, then up rows I + 8j..
        self.c13, self.s13, self.rs13 = _panels(w13, torch.cat([gate, gate + inter], dim=1).flatten())
        self.c2, self.s2, self.rs2 = _panels(w2, torch.arange(h))
        self.fmt, self.block = w13.fmt, w13.block
        self.num_experts, self.hidden, self.inter = e, h, inter
        if glu is not None and (glu.b13.shape != (e, 2 * inter) or glu.b2.shape != (e, h)):
            raise ValueError(f"expert biases b13 {tuple(glu.b13.shape)}, b2 {tuple(glu.b2.shape)} do not fit experts {tuple(w13.shape)}")
        self.glu = PanelGlu(glu, inter) if glu is not None else None

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.c13, self.s13, self.rs13, self.c2, self.s2, self.rs2))

    def run(self, x: torch.Tensor, weights: torch.Tensor, expert_ids: torch.Tensor) -> torch.Tensor:
        """The layer on these experts: `fp4_panel_moe(x, weights, expert_ids, self)`."""
        return fp4_panel_moe(x, weights, expert_ids, self)


def fp4_panel_moe(x: torch.Tensor, weights: torch.Tensor, expert_ids: torch.Tensor, experts: FP4PanelExperts) -> torch.Tensor:
    """A whole FP4 MoE layer: x [T, H], router weights/expert ids [T, k] -> [T, H] in x's dtype.

    Raises ValueError for non-CPU tensors or bad shapes/ids, KernelUnavailableError (a RuntimeError) if the
    kernel is not available here (no compiler or no AVX-512)."""
    lib = _KERNELS.require()
    if not lib.fp4_panels_supported():
        raise KernelUnavailableError("the CPU FP4 panel kernel needs AVX-512, which this CPU lacks")
    num_tokens, hidden = x.shape
    if x.device.type != "cpu" or hidden != experts.hidden:
        raise ValueError(f"x must be a CPU [T, {experts.hidden}] tensor, got {tuple(x.shape)} on {x.device}")
    if expert_ids.shape != weights.shape or expert_ids.dim() != 2 or expert_ids.shape[0] != num_tokens:
        raise ValueError(f"router weights {tuple(weights.shape)} and expert ids {tuple(expert_ids.shape)} must both be [{num_tokens}, k]")
    ids = expert_ids if expert_ids.dtype == torch.int64 and expert_ids.is_contiguous() else expert_ids.to(torch.int64).contiguous()
    xc = x if x.dtype == torch.float32 and x.is_contiguous() else x.float().contiguous()
    topw = weights if weights.dtype == torch.float32 and weights.is_contiguous() else weights.float().contiguous()
    e, pairs = experts.num_experts, ids.numel()
    out = torch.empty(num_tokens, hidden, dtype=torch.float32)
    scratch = torch.empty(pairs * (2 * hidden + experts.inter * (3 if experts.glu else 1)), dtype=torch.float32)
    iscratch = torch.empty(2 * pairs + 3 * e + 1, dtype=torch.int64)
    status = lib.fp4_panel_moe(
        xc.data_ptr(), num_tokens, hidden, experts.inter, ids.shape[1], ids.data_ptr(), topw.data_ptr(),
        experts.c13.data_ptr(), experts.s13.data_ptr(), experts.rs13.data_ptr(), experts.c2.data_ptr(), experts.s2.data_ptr(),
        experts.rs2.data_ptr(), experts.block, e, out.data_ptr(), scratch.data_ptr(),
        iscratch.data_ptr(), torch.get_num_threads(), *glu_args(experts.glu))
    if status == -1:
        raise ValueError(f"expert ids must be in [0, {e})")
    return out if x.dtype == torch.float32 else out.to(x.dtype)
