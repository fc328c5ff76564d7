"""Linear layers for the CPU path: y = x W^T (+ b) with weights packed into 16-column panels.

Why: at the batch sizes of decoding and speculative verification (1-32 rows) the BLAS behind
`F.linear` runs these thin products at a fraction of the machine's FMA rate (~40 GFLOP/s at
16 x 512 x 512 on two AVX2 cores, where the arithmetic allows ~150): its blocking targets large
matrices, and each call pays fixed costs. Here every weight is stored once as panels
`[ceil(N / 16), K, 16]`, so the 16 outputs of a panel are one contiguous stream over K; a tile of
up to 6 activation rows keeps its 6 x 16 sums in 12 AVX registers and each step of K is two
weight loads, six broadcasts and twelve FMAs. Tiles of all rows walk a panel while it is in
cache; OpenMP splits the panels between threads (how: chosen per CPU by `autotune`, see DEFAULT).

Weights are packed as bf16 bits when that is lossless (checkpoints shipped in bf16, like the
embedded model: half the bytes to stream, widened in registers) and as fp32 otherwise. Larger
inputs (prefill) run the same kernel: it is one copy of the weights, no second layout for BLAS.
`F.linear` on the unpacked weight is the oracle (tests/engine/test_cpu_linear.py). Built on first
use by `kernels.cpu.native`; without a C compiler `available()` is False and layers keep `nn.Linear`.
"""

from __future__ import annotations

import ctypes
import functools
import itertools

import torch
import torch.nn.functional as F
from torch import nn

from engine.kernels.cpu import autotune, native

PANEL = 16  # output columns per panel (two AVX2 vectors)
_BF16_ORDER = [0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15]  # storage order of a bf16 panel's columns


_P, _I = native.PTR, native.I64
_SIGNATURES = (("packed_linear", (_P, _I, _I, _I, _P, _I, _I, _P, _P, _I, _I, _P)),)

# The work split (linear.c's tune array), chosen per CPU by autotune.py among numerically identical
# candidates: panels per work item, rows per tile, item order (0: panel-major, 1: row-major) and the
# work (M x K x panels) below which one thread runs the call, and the k-block of the k-blocked tiles
# (AVX2 builds, 7-32 rows; the MoE and decoder kernels read it from this array too). k_block = 0, each
# tile walking K whole, is their reference schedule (tests), not a candidate: the tuning workloads'
# weights stay in cache, where blocking gains nothing, while a decode step streams every weight
# from memory, where it measured 20% faster (linear.c).
KNOBS = ("panels_per_item", "rows_per_tile", "row_major", "min_parallel_work", "k_block")
DEFAULT = (2, 6, 0, 8192, 128)
CANDIDATES = tuple(itertools.product((1, 2, 4), (3, 4, 6), (0, 1), (8192, 65536), (128,)))
TUNE_SHAPE = (1024, 1024)  # K, N of the tuning workloads (a small model's projection)


def _workloads() -> dict[str, autotune.Workload]:
    """Decode- and verification-sized products (1, 4 and 16 rows; fp32 and bf16 panels) to time."""
    lib = _KERNELS.require()
    k, n = TUNE_SHAPE
    g = torch.Generator().manual_seed(0)
    calls: dict[str, autotune.Workload] = {}
    for rows, dtype in ((1, torch.float32), (4, torch.bfloat16), (16, torch.float32)):
        panels = pack(torch.randn(n, k, generator=g).to(dtype), dtype)
        x = torch.randn(rows, k, generator=g)
        calls[f"{rows}x{k}x{n} {str(dtype)[6:]}"] = functools.partial(_run, lib, x, panels, n, None)
    return calls


_KERNELS = native.Kernels("linear", _SIGNATURES, autotune.Space(KNOBS, DEFAULT, CANDIDATES, _workloads))


def available() -> bool:
    """Whether the compiled kernel can be used (builds it on the first call)."""
    return _KERNELS.available()


def lossless_bf16(w: torch.Tensor) -> bool:
    """Whether every value of `w` is exactly representable in bf16."""
    wf = w.detach().float()
    return bool(torch.equal(wf.to(torch.bfloat16).float(), wf))


def pack(weight: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """[..., N, K] weight -> panels [..., ceil(N / 16), K, 16], zero-padded past N.

    dtype: torch.bfloat16 or torch.float32; by default bf16 when that is lossless, else fp32."""
    if weight.dim() < 2:
        raise ValueError(f"pack takes a [..., N, K] weight, got shape {tuple(weight.shape)}")
    w = weight.detach().float()
    if dtype is None:
        dtype = torch.bfloat16 if lossless_bf16(w) else torch.float32
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"panels are fp32 or bf16, not {dtype}")
    *lead, n, k = w.shape
    panels = -(-n // PANEL)
    padded = torch.zeros(*lead, panels * PANEL, k, dtype=torch.float32)
    padded[..., :n, :] = w
    out = padded.view(*lead, panels, PANEL, k).transpose(-1, -2)
    if dtype == torch.bfloat16:
        out = out[..., _BF16_ORDER]  # the kernel widens bf16 columns 0-3, 8-11 | 4-7, 12-15 by interleaving
    return out.contiguous().to(dtype)


def unpack(panels: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of `pack`: panels [..., P, K, 16] -> [..., n, K] fp32."""
    *lead, p, k, width = panels.shape
    if panels.dtype == torch.bfloat16:
        panels = panels[..., _BF16_ORDER]  # the order is its own inverse
    return panels.float().transpose(-1, -2).reshape(*lead, p * width, k)[..., :n, :]


def packed_linear(x: torch.Tensor, panels: torch.Tensor, n: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] @ W^T (+ bias) -> [M, n] fp32, W given as `pack(W)` panels [P, K, 16].

    Raises ValueError on bad shapes/devices, KernelUnavailableError if the kernel is not available."""
    lib = _KERNELS.require()
    if panels.dim() != 3 or panels.shape[2] != PANEL or panels.dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"panels must be [P, K, {PANEL}] fp32/bf16, got {tuple(panels.shape)} {panels.dtype}")
    p, k, _ = panels.shape
    if not 0 < n <= p * PANEL or n <= (p - 1) * PANEL:
        raise ValueError(f"{p} panels hold {(p - 1) * PANEL + 1}..{p * PANEL} outputs, not {n}")
    if x.dim() != 2 or x.shape[1] != k:
        raise ValueError(f"x must be [M, {k}], got {tuple(x.shape)}")
    if x.device.type != "cpu" or panels.device.type != "cpu" or not panels.is_contiguous():
        raise ValueError("packed_linear takes CPU tensors and contiguous panels")
    if bias is not None and (bias.shape != (n,) or bias.dtype != torch.float32 or not bias.is_contiguous()):
        raise ValueError(f"bias must be a contiguous fp32 [{n}]")
    xc = x if x.dtype == torch.float32 and x.stride(1) == 1 else x.float().contiguous()
    return _run(lib, xc, panels, n, bias)


def _run(lib: ctypes.CDLL, x: torch.Tensor, panels: torch.Tensor, n: int, bias: torch.Tensor | None, tune: int | None = None) -> torch.Tensor:
    """The kernel call on checked arguments: fp32 x [M, K] contiguous along K; `tune`: the address of
    a work split (default: the one in force)."""
    y = torch.empty(x.shape[0], n, dtype=torch.float32)
    if x.shape[0]:
        lib.packed_linear(x.data_ptr(), x.shape[0], x.stride(0), x.shape[1], panels.data_ptr(), int(panels.dtype == torch.bfloat16), n,
                          None if bias is None else bias.data_ptr(), y.data_ptr(), n, torch.get_num_threads(),
                          _KERNELS.tune if tune is None else tune)
    return y


class PackedLinear(nn.Module):
    """Serving replacement of an `nn.Linear` on CPU: the weight lives only as panels (see module doc).

    `weight` unpacks on demand (fp32) for code that inspects it; inference only (no autograd)."""

    panels: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("panels", pack(linear.weight))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().contiguous())
        self.out_dtype = linear.weight.dtype

    @property
    def weight(self) -> torch.Tensor:
        return unpack(self.panels, self.out_features).to(self.out_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return F.linear(x, self.weight, self.bias)
        if x.dim() == 2 and x.dtype == torch.float32 and x.stride(1) == 1 and x.device.type == "cpu" and x.shape[1] == self.in_features:
            # the hot path (decode steps): shapes were checked when packing; no re-validation
            return _run(_KERNELS.require(), x, self.panels, self.out_features, self.bias)
        shape = x.shape
        y = packed_linear(x.reshape(-1, shape[-1]), self.panels, self.out_features, self.bias)
        return y.view(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, panels={self.panels.dtype}"
