"""A fused FP4 matmul for the CPU: y = x @ W.T with W packed E2M1 (two codes per byte) and its
block scales, decoded in registers block by block, never materialised as a dense tile.

Why: dequantising an expert into a float tile and then calling BLAS touches every weight element
in memory twice more than the packed bytes (write the tile, read it back) and runs through several
generic torch ops; at decode-sized batches that costs more than the matmul itself (measured in
docs/architecture.md). This kernel reads the packed bytes and one scale byte per block, decodes
through two small tables (16 E2M1 values, 256 scale values) and accumulates the block's dot
products for every activation row before moving on, so the weights stream through once.

It is a few lines of C built on first use by `kernels.cpu.native` (system C compiler, ctypes, cached
in ~/.cache/agentrt/). Without a working compiler
`available()` is False and callers use the torch path (`FP4Tensor.dequantize` + matmul), which is
also this kernel's test oracle.
"""

from __future__ import annotations

import functools

import torch

from engine.kernels.cpu import native
from engine.kernels.fp4 import FP4Experts, FP4Tensor

MAX_ROWS = 16  # activation rows per call (decode-sized); larger batches use dequantise + BLAS


_SIGNATURES = (
    ("fp4_matmul", (native.PTR, native.I64, native.I64, native.PTR, native.I64, native.PTR, native.I64, native.PTR,
                    native.PTR, native.I64, native.I64, native.PTR, native.I64)),
    ("fp4_moe", (native.PTR, native.I64, native.I64, native.I64, native.I64, native.PTR, native.PTR, native.PTR, native.PTR,
                 native.PTR, native.PTR, native.PTR, native.PTR, native.PTR, native.I64, native.I64, native.PTR, native.PTR,
                 native.I64)),
)


_KERNELS = native.Kernels("fp4_matmul", _SIGNATURES)


def available() -> bool:
    """Whether the compiled kernel can be used (builds it on the first call)."""
    return _KERNELS.available()


@functools.cache
def _scale_lut(fmt: str) -> torch.Tensor:
    """fp32 value of every scale byte: FP8 E4M3 bits (NVFP4) or E8M0 exponents (MXFP4, 255 = NaN)."""
    codes = torch.arange(256, dtype=torch.int32)
    if fmt == "nvfp4":
        return codes.to(torch.uint8).view(torch.float8_e4m3fn).float()
    return torch.where(codes == 255, torch.tensor(float("nan")), torch.exp2(codes.float() - 127))


def fp4_matmul(x: torch.Tensor, weight: FP4Tensor, row_scale: torch.Tensor) -> torch.Tensor:
    """x [M, K] @ weight.T for a 2-D packed weight [N, K] -> [M, N] fp32 (x cast to fp32).

    `row_scale` [N] fp32: each row's second-level scale (`FP4Tensor.row_scales()`). Raises
    ValueError on shape mismatches, M > MAX_ROWS or a non-CPU tensor; KernelUnavailableError if the kernel
    is not available (check `available()` first)."""
    lib = _KERNELS.require()
    n, k = weight.shape
    if x.dim() != 2 or x.shape[1] != k or x.shape[0] > MAX_ROWS:
        raise ValueError(f"x must be [M <= {MAX_ROWS}, {k}], got {tuple(x.shape)}")
    if x.device.type != "cpu" or weight.packed.device.type != "cpu":
        raise ValueError("fp4_matmul runs on CPU tensors")
    if row_scale.shape != (n,):
        raise ValueError(f"row_scale must be [{n}], got {tuple(row_scale.shape)}")
    xc = x.float().contiguous()
    packed, scales = weight.packed, weight.scales.view(torch.uint8)
    if packed.stride(1) != 1 or scales.stride(1) != 1:
        raise ValueError("packed weights and scales must be contiguous along K")
    rs = row_scale.float().contiguous()
    lut = _scale_lut(weight.fmt)
    y = torch.empty(x.shape[0], n, dtype=torch.float32)
    if x.shape[0]:
        lib.fp4_matmul(xc.data_ptr(), xc.shape[0], k, packed.data_ptr(), packed.stride(0), scales.data_ptr(), scales.stride(0),
                       lut.data_ptr(), rs.data_ptr(), n, weight.block, y.data_ptr(), torch.get_num_threads())
    return y


MAX_MOE_TOKENS = 32  # tokens per step up to which `fp4_moe` runs the whole layer in one call (it beat per-expert calls 2.3x at 32)


def fp4_moe(x: torch.Tensor, weights: torch.Tensor, expert_ids: torch.Tensor, experts: FP4Experts) -> torch.Tensor:
    """A whole FP4 MoE layer for a few tokens in one call: x [T, H], weights/expert_ids [T, k]
    -> [T, H] in x's dtype. Each expert's rows go through gate/up, SwiGLU and down in the kernel.

    Raises ValueError for more than MAX_MOE_TOKENS tokens, non-CPU tensors or non-contiguous
    packed experts; KernelUnavailableError if the kernel is not available."""
    lib = _KERNELS.require()
    num_tokens, hidden = x.shape
    if num_tokens > MAX_MOE_TOKENS or x.device.type != "cpu":
        raise ValueError(f"fp4_moe takes at most {MAX_MOE_TOKENS} CPU tokens, got {num_tokens} on {x.device}")
    w13, w2 = experts.w13, experts.w2
    e, two_i, _ = w13.shape
    inter = two_i // 2
    tensors = (w13.packed, w13.scales, w2.packed, w2.scales)
    if not all(t.is_contiguous() for t in tensors):
        raise ValueError("fp4_moe needs contiguous packed experts and scales")
    xc = x.float().contiguous()
    ids = expert_ids.to(torch.int64).contiguous()
    topw = weights.float().contiguous()
    rs13, rs2 = experts.row_scales("cpu")
    out = torch.zeros(num_tokens, hidden, dtype=torch.float32)
    scratch = torch.empty(16 * (2 * hidden + 3 * inter), dtype=torch.float32)
    lib.fp4_moe(xc.data_ptr(), num_tokens, hidden, inter, ids.shape[1], ids.data_ptr(), topw.data_ptr(),
                w13.packed.data_ptr(), w13.scales.view(torch.uint8).data_ptr(), rs13.data_ptr(),
                w2.packed.data_ptr(), w2.scales.view(torch.uint8).data_ptr(), rs2.data_ptr(),
                _scale_lut(w13.fmt).data_ptr(), w13.block, e, out.data_ptr(), scratch.data_ptr(), torch.get_num_threads())
    return out.to(x.dtype)
