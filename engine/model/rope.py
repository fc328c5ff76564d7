"""RoPE scaling: the config's `rope_parameters` / `rope_scaling` parsed and turned into frequencies.

Supported types: default, linear (positions divided by `factor`), llama3 (wavelength-banded
scaling), yarn (NTK-by-parts interpolation plus a cos/sin magnitude factor). Any other type, or a
field these types do not use that would change the math (e.g. `partial_rotary_factor` != 1),
raises ModelLoadError naming it. The formulas follow the published definitions (transformers'
modeling_rope_utils is the reference the parity tests compare against).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from engine.errors import ModelLoadError

ROPE_TYPES = ("default", "linear", "llama3", "yarn")
# Keys each type reads (besides rope_type/type and rope_theta); anything else is refused.
_KEYS = {
    "default": set(),
    "linear": {"factor"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
    "yarn": {"factor", "original_max_position_embeddings", "attention_factor", "beta_fast", "beta_slow",
             "mscale", "mscale_all_dim", "truncate"},
}


@dataclass(frozen=True, slots=True)
class RopeScaling:
    """One model's RoPE: base `theta` and the scaling type with its parameters."""

    theta: float = 10000.0
    rope_type: str = "default"
    factor: float = 1.0
    original_max_position_embeddings: int = 0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    attention_factor: float | None = None
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 0.0
    mscale_all_dim: float = 0.0
    truncate: bool = True

    @classmethod
    def from_hf(cls, raw: dict[str, Any]) -> RopeScaling:
        """Parse a HF config dict (transformers 5 `rope_parameters` or the older `rope_scaling` +
        `rope_theta`). Raises ModelLoadError naming an unsupported type or field."""
        params = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
        if isinstance(params.get(next(iter(params), ""), None), dict):
            raise ModelLoadError("rope_parameters per layer type are not supported")
        theta = float(params.pop("rope_theta", raw.get("rope_theta", 10000.0)))
        kind = params.pop("rope_type", None) or params.pop("type", None) or "default"
        params.pop("type", None)
        if kind not in ROPE_TYPES:
            raise ModelLoadError(f"rope_scaling.rope_type {kind!r} is not supported; supported: {', '.join(ROPE_TYPES)}")
        partial = params.pop("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0))
        if partial not in (None, 1, 1.0):
            raise ModelLoadError(f"partial_rotary_factor {partial} is not supported (only 1.0)")
        extra = sorted(k for k, v in params.items() if k not in _KEYS[kind] and v is not None)
        if extra:
            raise ModelLoadError(f"rope_scaling.{extra[0]} is not supported for rope_type {kind!r}")
        omax = params.get("original_max_position_embeddings") or raw.get("original_max_position_embeddings") \
            or raw.get("max_position_embeddings", 4096)
        factor = params.get("factor")
        if factor is None:
            if kind in ("linear", "llama3"):
                raise ModelLoadError(f"rope_scaling.factor is required for rope_type {kind!r}")
            factor = raw.get("max_position_embeddings", omax) / omax if kind == "yarn" else 1.0
        defaults = cls()
        return cls(
            theta=theta, rope_type=kind, factor=float(factor), original_max_position_embeddings=int(omax),
            low_freq_factor=float(params.get("low_freq_factor", defaults.low_freq_factor)),
            high_freq_factor=float(params.get("high_freq_factor", defaults.high_freq_factor)),
            attention_factor=params.get("attention_factor"),
            beta_fast=float(params.get("beta_fast") or defaults.beta_fast),
            beta_slow=float(params.get("beta_slow") or defaults.beta_slow),
            mscale=float(params.get("mscale") or 0.0), mscale_all_dim=float(params.get("mscale_all_dim") or 0.0),
            truncate=bool(params.get("truncate", True)),
        )

    def frequencies(self, dim: int) -> tuple[torch.Tensor, float]:
        """(inverse frequencies [dim // 2] fp32, the factor cos/sin are multiplied by)."""
        inv = 1.0 / (self.theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        if self.rope_type == "linear":
            return inv / self.factor, 1.0
        if self.rope_type == "llama3":
            return self._llama3(inv), 1.0
        if self.rope_type == "yarn":
            return self._yarn(dim)
        return inv, 1.0

    def _llama3(self, inv: torch.Tensor) -> torch.Tensor:
        old = self.original_max_position_embeddings
        low_wavelen, high_wavelen = old / self.low_freq_factor, old / self.high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > low_wavelen, inv / self.factor, inv)
        smooth = (old / wavelen - self.low_freq_factor) / (self.high_freq_factor - self.low_freq_factor)
        smoothed = (1 - smooth) * scaled / self.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, smoothed, scaled)

    def _yarn(self, dim: int) -> tuple[torch.Tensor, float]:
        def mscale(scale: float, m: float = 1.0) -> float:
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        attn = self.attention_factor
        if attn is None:
            attn = mscale(self.factor, self.mscale) / mscale(self.factor, self.mscale_all_dim) \
                if self.mscale and self.mscale_all_dim else mscale(self.factor)

        def correction_dim(rotations: float) -> float:
            return dim * math.log(self.original_max_position_embeddings / (rotations * 2 * math.pi)) / (2 * math.log(self.theta))

        low, high = correction_dim(self.beta_fast), correction_dim(self.beta_slow)
        if self.truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
        pos = self.theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
        extrapolate = 1 - ramp
        inv = (1.0 / (self.factor * pos)) * (1 - extrapolate) + (1.0 / pos) * extrapolate
        return inv, float(attn)
