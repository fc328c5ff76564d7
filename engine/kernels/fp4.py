"""FP4 weight formats: E2M1 elements with NVFP4 or MXFP4 block scales. Pure torch, exact to spec.

E2M1: 1 sign, 2 exponent, 1 mantissa bit; magnitudes {0, 0.5, 1, 1.5, 2, 3, 4, 6} (codes 0..7, sign
bit 8). Rounding is to nearest with ties to even (the even code, mantissa bit 0); magnitudes above 6
saturate to 6. Two elements per byte, the even-indexed element in the low nibble.

* NVFP4: blocks of 16 along the last dimension; block scale in FP8 E4M3; one FP32 per-tensor scale
  = amax(|W|) / (6 * 448), so block scales use the whole E4M3 range. Block scale = amax(block) / 6 /
  tensor scale, rounded to E4M3.
* MXFP4 (OCP MX v1.0): blocks of 32; E8M0 scale (a power of two, stored biased by 127). Scale rule:
  2^(floor(log2(amax(block))) - 2), the spec's "shared exponent = floor(log2 amax) - emax_elem" with
  emax_elem = 2 for E2M1; elements then saturate at 6. An all-zero block gets scale 2^-127.
* NaN or Inf in a block: FP4 cannot encode them, so the block's scale is NaN (E4M3 NaN / E8M0
  0xFF) and the whole block dequantises to NaN, making the fault visible rather than silent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

E2M1_VALUES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
_MIDPOINTS = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
FP8_E4M3_MAX = 448.0


def e2m1_encode(x: torch.Tensor) -> torch.Tensor:
    """Round (already scaled) values to E2M1 codes (uint8 in 0..15), ties to even, saturating."""
    mag = x.abs().float()
    idx = torch.bucketize(mag, _MIDPOINTS.to(mag.device))  # ties land on the lower code
    at_mid = (idx < 7) & (mag == _MIDPOINTS.to(mag.device)[idx.clamp(max=6)])
    idx = idx + (at_mid & (idx % 2 == 1)).long()  # a tie with an odd lower code goes up to the even one
    sign = torch.signbit(x).long() << 3  # -0 keeps its sign bit (code 8), as a negative zero
    return (idx | sign).to(torch.uint8)


def e2m1_decode(codes: torch.Tensor) -> torch.Tensor:
    """E2M1 codes (uint8 0..15) to float32 values."""
    c = codes.long()
    mag = E2M1_VALUES.to(codes.device)[c & 7]
    return torch.where((c & 8) != 0, -mag, mag)


_TABLES: dict[torch.device, torch.Tensor] = {}


def _byte_table(device: torch.device) -> torch.Tensor:
    """[256, 2]: the two E2M1 values (low nibble first) of every byte."""
    if device not in _TABLES:
        codes = torch.arange(256, dtype=torch.uint8)
        _TABLES[device] = torch.stack([e2m1_decode(codes & 0x0F), e2m1_decode(codes >> 4)], dim=-1).to(device)
    return _TABLES[device]


def pack(codes: torch.Tensor) -> torch.Tensor:
    """[..., 2n] codes -> [..., n] bytes; element 2i in the low nibble, 2i+1 in the high nibble."""
    if codes.shape[-1] % 2:
        raise ValueError(f"last dimension must be even to pack, got {codes.shape[-1]}")
    c = codes.to(torch.uint8)
    return c[..., 0::2] | (c[..., 1::2] << 4)


def unpack(packed: torch.Tensor) -> torch.Tensor:
    """[..., n] bytes -> [..., 2n] codes."""
    low, high = packed & 0x0F, packed >> 4
    return torch.stack([low, high], dim=-1).flatten(-2)


@dataclass(slots=True)
class FP4Tensor:
    """A packed FP4 tensor: `packed` [..., cols/2] uint8, `scales` [..., cols/block], format info."""

    packed: torch.Tensor
    scales: torch.Tensor  # float8_e4m3fn (NVFP4) or uint8 biased exponents (MXFP4)
    # NVFP4 second-level FP32 scale (1.0 for MXFP4): one float per tensor, or, for checkpoints that
    # carry one per expert and projection (ModelOpt's weight_scale_2), a tensor [..., rows, 1].
    tensor_scale: float | torch.Tensor
    fmt: str
    shape: tuple[int, ...]

    @property
    def block(self) -> int:
        return 16 if self.fmt == "nvfp4" else 32

    @property
    def nbytes(self) -> int:
        extra = self.tensor_scale.numel() * 4 if isinstance(self.tensor_scale, torch.Tensor) else 4
        return self.packed.numel() + self.scales.numel() * self.scales.element_size() + extra

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Fast path: one table lookup per byte (both nibbles at once, an embedding lookup with
        int32 indices: ~3x faster on CPU than int64 advanced indexing), then the block scales."""
        values = F.embedding(self.packed.int(), _byte_table(self.packed.device))  # [..., cols/2, 2]
        values = values.view(*self.shape[:-1], -1, self.block)  # [..., nblocks, block]
        return (values * self.block_scales()[..., None]).reshape(self.shape).to(dtype)

    def dequantize_reference(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Slow twin of `dequantize`: unpack nibbles, decode each code."""
        values = e2m1_decode(unpack(self.packed)).view(*self.shape[:-1], -1, self.block)
        return (values * self.block_scales()[..., None]).reshape(self.shape).to(dtype)

    def select(self, index: int) -> FP4Tensor:
        """The sub-tensor at `index` of the first dimension (e.g. one expert of a stacked weight)."""
        ts = self.tensor_scale[index] if isinstance(self.tensor_scale, torch.Tensor) else self.tensor_scale
        return FP4Tensor(self.packed[index], self.scales[index], ts, self.fmt, self.shape[1:])

    def row_scales(self) -> torch.Tensor:
        """The second-level scale of every row, fp32 [*shape[:-1]] (ones for MXFP4)."""
        ts = self.tensor_scale
        if isinstance(ts, torch.Tensor):
            return ts.float().expand(*self.shape[:-1], 1)[..., 0].contiguous()
        return torch.full(self.shape[:-1], float(ts), dtype=torch.float32, device=self.packed.device)

    def block_scales(self) -> torch.Tensor:
        if self.fmt == "nvfp4":
            return self.scales.float() * self.tensor_scale
        e = self.scales.float()
        return torch.where(e == 255, torch.full_like(e, float("nan")), torch.exp2(e - 127))


class FP4Experts(Protocol):
    """What the FP4 MoE kernels read of a layer's packed experts (`engine.moe.quantized.QuantizedExperts`):
    w13 [E, 2I, H] and w2 [E, H, I], and their per-row second-level scales on a device."""

    @property
    def w13(self) -> FP4Tensor: ...

    @property
    def w2(self) -> FP4Tensor: ...

    def row_scales(self, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]: ...


def quantize(w: torch.Tensor, fmt: str) -> FP4Tensor:
    """Quantise `w` (last dimension a multiple of the block size) to NVFP4 or MXFP4."""
    if fmt not in ("nvfp4", "mxfp4"):
        raise ValueError(f"format must be 'nvfp4' or 'mxfp4', got {fmt!r}")
    block = 16 if fmt == "nvfp4" else 32
    if w.shape[-1] % block:
        raise ValueError(f"last dimension {w.shape[-1]} is not a multiple of the {fmt} block size {block}")
    x = w.float().contiguous().reshape(*w.shape[:-1], -1, block)  # [..., nblocks, block]
    bad = ~torch.isfinite(x).all(dim=-1)  # [..., nblocks]
    amax = x.abs().nan_to_num(0.0, posinf=0.0).amax(dim=-1)
    if fmt == "nvfp4":
        finite_max = float(amax.max()) if amax.numel() else 0.0
        tensor_scale = finite_max / (6.0 * FP8_E4M3_MAX) if finite_max > 0 else 1.0
        scales = (amax / 6.0 / tensor_scale).clamp(max=FP8_E4M3_MAX).to(torch.float8_e4m3fn)
        scales = torch.where(bad, torch.full_like(scales.float(), float("nan")), scales.float()).to(torch.float8_e4m3fn)
        denom = scales.float() * tensor_scale
    else:
        tensor_scale = 1.0
        exp = torch.floor(torch.log2(amax.clamp(min=2.0**-127))) - 2
        biased = (exp + 127).clamp(0, 254)
        biased = torch.where(bad, torch.full_like(biased, 255), biased)
        scales = biased.to(torch.uint8)
        denom = torch.exp2(biased - 127)
    scaled = torch.where(denom[..., None] > 0, x / denom[..., None], torch.zeros_like(x))
    codes = e2m1_encode(scaled.nan_to_num(0.0)).reshape(w.shape)
    return FP4Tensor(pack(codes), scales, tensor_scale, fmt, tuple(w.shape))
