"""Pre-quantised FP4 checkpoints: MoE expert weights stored packed, in the layouts real checkpoints use.

* MXFP4, gpt-oss style (`quantization_config = {"quant_method": "mxfp4"}`): per MoE layer
  `...experts.gate_up_proj_blocks` uint8 [E, 2I, H/32, 16] (32 E2M1 values in 16 bytes, the even
  element in the low nibble), `...experts.gate_up_proj_scales` uint8 [E, 2I, H/32] (E8M0, bias
  127), and `down_proj_blocks` [E, H, I/32, 16] / `down_proj_scales` [E, H, I/32]. Rows are ours
  (gate rows then up rows), not gpt-oss's interleaved gate/up columns: this is the tensor layout,
  not the gpt-oss architecture.
* NVFP4, NVIDIA ModelOpt style (`{"quant_method": "modelopt", "quant_algo": "NVFP4",
  "group_size": 16}`): per expert and projection `...experts.{e}.gate_proj.weight` uint8 [I, H/2],
  `.weight_scale` float8_e4m3fn [I, H/16] and `.weight_scale_2` fp32 scalar; the weight is
  fp4 x weight_scale x weight_scale_2 (the second-level scale multiplies). `input_scale` (for FP4
  activations) is accepted and ignored: this engine dequantises weights and keeps activations.

Attention, router, norms and embeddings stay dense (bf16 in the files). Loading builds
`MoE.quantized` straight from the packed tensors; the dense expert weights are never allocated.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from engine.errors import ModelLoadError
from engine.kernels.fp4 import FP4Tensor
from engine.model.config import ModelConfig
from engine.moe.quantized import QuantizedExperts

QUANT_CONFIGS = {
    "mxfp4": {"quant_method": "mxfp4"},
    "nvfp4": {"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16},
}
_MXFP4 = re.compile(r"(model\.layers\.\d+\.(?:mlp|block_sparse_moe)\.experts)\.(gate_up_proj|down_proj)_(blocks|scales)$")
_NVFP4 = re.compile(r"(model\.layers\.\d+\.(?:mlp|block_sparse_moe)\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj|w1|w3|w2)\.(weight|weight_scale|weight_scale_2|input_scale)$")


def quant_format(raw_config: dict[str, Any]) -> str | None:
    """The FP4 format a config.json declares ("mxfp4", "nvfp4"), None when unquantised.
    Raises ModelLoadError for a quantization_config this engine cannot load."""
    qc = raw_config.get("quantization_config")
    if qc is None:
        return None
    method, algo = qc.get("quant_method"), str(qc.get("quant_algo", "")).upper()
    if method == "mxfp4":
        return "mxfp4"
    if method == "modelopt" and algo == "NVFP4":
        return "nvfp4"
    raise ModelLoadError(f"unsupported quantization_config {qc!r}: expected mxfp4 or modelopt NVFP4")


def is_fp4_tensor(name: str, fmt: str) -> bool:
    return (_MXFP4 if fmt == "mxfp4" else _NVFP4).match(name) is not None


def _prefix(cfg: ModelConfig, layer: int) -> str:
    moe = "block_sparse_moe" if cfg.architecture == "MixtralForCausalLM" else "mlp"
    return f"model.layers.{layer}.{moe}.experts"


def export_tensors(cfg: ModelConfig, layer: int, experts: QuantizedExperts) -> dict[str, torch.Tensor]:
    """One MoE layer's FP4 expert tensors in the checkpoint layout of `experts.fmt`."""
    p, w13, w2 = _prefix(cfg, layer), experts.w13, experts.w2
    e, two_i, h = w13.shape
    inter = two_i // 2
    if experts.fmt == "mxfp4":
        return {
            f"{p}.gate_up_proj_blocks": w13.packed.reshape(e, two_i, h // 32, 16).contiguous(),
            f"{p}.gate_up_proj_scales": w13.scales.contiguous(),
            f"{p}.down_proj_blocks": w2.packed.reshape(e, h, inter // 32, 16).contiguous(),
            f"{p}.down_proj_scales": w2.scales.contiguous(),
        }
    out: dict[str, torch.Tensor] = {}
    rs13, rs2 = w13.row_scales(), w2.row_scales()
    names = ("w1", "w3", "w2") if cfg.architecture == "MixtralForCausalLM" else ("gate_proj", "up_proj", "down_proj")
    for i in range(e):
        parts = ((names[0], w13, slice(0, inter), rs13[i, 0]), (names[1], w13, slice(inter, two_i), rs13[i, inter]),
                 (names[2], w2, slice(0, h), rs2[i, 0]))
        for name, t, rows, scale2 in parts:
            out[f"{p}.{i}.{name}.weight"] = t.packed[i, rows].contiguous()
            out[f"{p}.{i}.{name}.weight_scale"] = t.scales[i, rows].contiguous()
            out[f"{p}.{i}.{name}.weight_scale_2"] = scale2.reshape(()).float().clone()
    return out


def _take(tensors: dict[str, torch.Tensor], name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    t = tensors.pop(name, None)
    if t is None:
        raise ModelLoadError(f"missing tensor {name}")
    if tuple(t.shape) != shape:
        raise ModelLoadError(f"tensor {name}: expected shape {shape}, file has {tuple(t.shape)}")
    if t.dtype != dtype:
        raise ModelLoadError(f"tensor {name}: expected dtype {dtype}, file has {t.dtype}")
    return t


def import_experts(cfg: ModelConfig, layer: int, fmt: str, tensors: dict[str, torch.Tensor]) -> QuantizedExperts:
    """Build one MoE layer's QuantizedExperts from checkpoint tensors (popped from `tensors`).
    Raises ModelLoadError naming the first missing or malformed tensor."""
    p, e, h, inter = _prefix(cfg, layer), cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size
    block = 32 if fmt == "mxfp4" else 16
    if h % block or inter % block:
        raise ModelLoadError(f"{fmt} needs hidden ({h}) and expert intermediate ({inter}) sizes divisible by {block}")
    if fmt == "mxfp4":
        b13 = _take(tensors, f"{p}.gate_up_proj_blocks", (e, 2 * inter, h // 32, 16), torch.uint8)
        s13 = _take(tensors, f"{p}.gate_up_proj_scales", (e, 2 * inter, h // 32), torch.uint8)
        b2 = _take(tensors, f"{p}.down_proj_blocks", (e, h, inter // 32, 16), torch.uint8)
        s2 = _take(tensors, f"{p}.down_proj_scales", (e, h, inter // 32), torch.uint8)
        w13 = FP4Tensor(b13.reshape(e, 2 * inter, h // 2), s13, 1.0, fmt, (e, 2 * inter, h))
        w2 = FP4Tensor(b2.reshape(e, h, inter // 2), s2, 1.0, fmt, (e, h, inter))
        return QuantizedExperts.from_fp4(w13, w2)
    names = ("w1", "w3", "w2") if cfg.architecture == "MixtralForCausalLM" else ("gate_proj", "up_proj", "down_proj")
    packed: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    scales: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    scale2: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for i in range(e):
        for n, (rows, cols) in zip(names, ((inter, h), (inter, h), (h, inter)), strict=True):
            q = f"{p}.{i}.{n}."
            packed[n].append(_take(tensors, q + "weight", (rows, cols // 2), torch.uint8))
            scales[n].append(_take(tensors, q + "weight_scale", (rows, cols // 16), torch.float8_e4m3fn))
            s = tensors.pop(q + "weight_scale_2", None)
            if s is None or s.numel() != 1:
                raise ModelLoadError(f"tensor {q}weight_scale_2: expected one fp32 value, file has {None if s is None else tuple(s.shape)}")
            scale2[n].append(s.float().reshape(1))
            tensors.pop(q + "input_scale", None)
    g, u, d = names
    rs13 = torch.cat([torch.stack(scale2[g])[:, None].expand(e, inter, 1), torch.stack(scale2[u])[:, None].expand(e, inter, 1)], dim=1)
    rs2 = torch.stack(scale2[d])[:, None].expand(e, h, 1)
    w13 = FP4Tensor(torch.cat([torch.stack(packed[g]), torch.stack(packed[u])], dim=1),
                    torch.cat([torch.stack(scales[g]), torch.stack(scales[u])], dim=1), _collapse(rs13), fmt, (e, 2 * inter, h))
    w2 = FP4Tensor(torch.stack(packed[d]), torch.stack(scales[d]), _collapse(rs2), fmt, (e, h, inter))
    return QuantizedExperts.from_fp4(w13, w2)


def _collapse(row_scales: torch.Tensor) -> float | torch.Tensor:
    """One float when every row shares the second-level scale (our own exports), else per row."""
    first = row_scales.flatten()[0]
    return float(first) if bool((row_scales == first).all()) else row_scales.contiguous()


def drop_dense_experts(layers: nn.ModuleList) -> None:
    """Replace the decoder layers' dense expert parameters by empty ones (before allocation; the
    MTP block keeps its dense experts, which checkpoints store in mtp.safetensors)."""
    from engine.model.layers import MoE

    for layer in layers:
        module = getattr(layer, "mlp", None)
        if isinstance(module, MoE):
            module.w13 = nn.Parameter(torch.empty(0, device=module.w13.device), requires_grad=False)
            module.w2 = nn.Parameter(torch.empty(0, device=module.w2.device), requires_grad=False)
