"""Load and save Hugging Face-format checkpoints (config.json + safetensors) of both MoE layouts.

Every tensor in the files must map onto the model and every model tensor must be filled: unknown
tensors, missing tensors and shape mismatches raise ModelLoadError naming the tensor. Tensors named
`mtp.*` (the MTP module) live in `mtp.safetensors`, which transformers ignores.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine.errors import ModelLoadError
from engine.model import deepseek_v3, gpt_oss
from engine.model.config import DEEPSEEK_V3, GPT_OSS, ModelConfig
from engine.model.fp4_checkpoint import (
    QUANT_CONFIGS,
    drop_dense_experts,
    export_tensors,
    import_experts,
    is_fp4_tensor,
    quant_format,
)
from engine.model.qwen3_moe import MoEForCausalLM

_EXPERT = re.compile(r"model\.layers\.(\d+)\.(?:mlp|block_sparse_moe)\.experts\.(gate_up_proj|down_proj)$")


def _targets(model: MoEForCausalLM, cfg: ModelConfig, skip_experts: bool = False) -> dict[str, torch.Tensor]:
    """Each classic HF tensor name -> the view of the model parameter it fills (without the
    decoder layers' expert weights when `skip_experts`: an FP4 checkpoint stores those packed)."""
    q, kv, inter = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.moe_intermediate_size
    mix = cfg.architecture == "MixtralForCausalLM"
    t: dict[str, torch.Tensor] = {"model.embed_tokens.weight": model.embed.weight.data, "model.norm.weight": model.norm.weight.data}
    if not cfg.tie_word_embeddings:
        t["lm_head.weight"] = model.lm_head.weight.data
    for i, layer_module in enumerate(model.layers):
        layer: Any = layer_module
        p = f"model.layers.{i}."
        attn = layer.attn
        t[p + "input_layernorm.weight"] = layer.input_norm.weight.data
        t[p + "post_attention_layernorm.weight"] = layer.post_norm.weight.data
        for name, sl in (("q", slice(0, q)), ("k", slice(q, q + kv)), ("v", slice(q + kv, q + 2 * kv))):
            t[p + f"self_attn.{name}_proj.weight"] = attn.qkv_proj.weight.data[sl]
            if cfg.attention_bias:
                t[p + f"self_attn.{name}_proj.bias"] = attn.qkv_proj.bias.data[sl]
        t[p + "self_attn.o_proj.weight"] = attn.o_proj.weight.data
        if cfg.attention_bias:
            t[p + "self_attn.o_proj.bias"] = attn.o_proj.bias.data
        if attn.q_norm is not None and attn.k_norm is not None:
            t[p + "self_attn.q_norm.weight"] = attn.q_norm.weight.data
            t[p + "self_attn.k_norm.weight"] = attn.k_norm.weight.data
        mlp = layer.mlp
        if not cfg.is_sparse(i):
            di = cfg.intermediate_size
            t[p + "mlp.gate_proj.weight"], t[p + "mlp.up_proj.weight"] = mlp.w13.data[:di], mlp.w13.data[di:]
            t[p + "mlp.down_proj.weight"] = mlp.w2.data
            continue
        moe = p + ("block_sparse_moe." if mix else "mlp.")
        t[moe + "gate.weight"] = mlp.gate.weight.data
        for e in range(0 if skip_experts else cfg.num_experts):
            names = ("w1", "w3", "w2") if mix else ("gate_proj", "up_proj", "down_proj")
            t[moe + f"experts.{e}.{names[0]}.weight"] = mlp.w13.data[e, :inter]
            t[moe + f"experts.{e}.{names[1]}.weight"] = mlp.w13.data[e, inter:]
            t[moe + f"experts.{e}.{names[2]}.weight"] = mlp.w2.data[e]
    if model.mtp is not None:
        for name, param in model.mtp.named_parameters():
            t["mtp." + name] = param.data
    return t


def _copy(name: str, dst: torch.Tensor, src: torch.Tensor) -> None:
    if tuple(dst.shape) != tuple(src.shape):
        raise ModelLoadError(f"tensor {name}: expected shape {tuple(dst.shape)}, file has {tuple(src.shape)}")
    dst.copy_(src)


def _load_fused(name: str, src: torch.Tensor, model: MoEForCausalLM, targets: dict[str, torch.Tensor], done: set[str]) -> bool:
    """Fused expert tensors ([E, 2I, H] gate_up / [E, H, I] down, either orientation)."""
    m = _EXPERT.match(name)
    if m is None:
        return False
    layer, kind = int(m.group(1)), m.group(2)
    if layer == len(model.layers) and model.mtp is not None:  # DeepSeek's MTP layer follows the decoder layers
        mlp: Any = model.mtp.layer.mlp  # type: ignore[union-attr]
    elif layer < len(model.layers):
        mlp = model.layers[layer].mlp
    else:
        raise ModelLoadError(f"unknown tensor {name}: the model has {len(model.layers)} layers")
    dst = mlp.w13.data if kind == "gate_up_proj" else mlp.w2.data
    if src.shape != dst.shape and src.transpose(1, 2).shape == dst.shape:
        src = src.transpose(1, 2)
    _copy(name, dst, src)
    key = "gate_proj" if kind == "gate_up_proj" else "down_proj"
    prefix = name.rsplit("experts.", 1)[0]
    done.update(k for k in targets if k.startswith(prefix + "experts.") and (key in k or ("up_proj" in k and key == "gate_proj") or (kind == "gate_up_proj" and k.endswith(("w1.weight", "w3.weight"))) or (kind == "down_proj" and k.endswith("w2.weight"))))
    return True


def _has_mtp_tensors(path: Path, layer: int) -> bool:
    prefix = f"model.layers.{layer}."
    for file in _files(path):
        with safe_open(str(file), framework="pt") as fh:
            if any(k.startswith(prefix) for k in fh.keys()):
                return True
    return False


def _files(path: Path) -> list[Path]:
    files = sorted(p for p in path.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"no *.safetensors files in {path}")
    return files


def load_model(path: str | Path, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> tuple[MoEForCausalLM, ModelConfig]:
    """Build the model from a HF directory. Raises ModelLoadError (naming the tensor) on any mismatch."""
    path = Path(path)
    cfg = ModelConfig.from_hf(path)
    fmt = quant_format(json.loads((path / "config.json").read_text()))
    if (path / "mtp.safetensors").exists() and cfg.mtp_num_layers == 0:
        cfg.mtp_num_layers = 1
    oss, ds = cfg.architecture == GPT_OSS, cfg.architecture == DEEPSEEK_V3
    if ds and cfg.mtp_num_layers and not _has_mtp_tensors(path, cfg.num_layers):
        cfg.mtp_num_layers = 0  # the config names an MTP layer the files do not carry (e.g. transformers' save)
    with torch.device("meta"):
        family = {GPT_OSS: gpt_oss.GptOssForCausalLM, DEEPSEEK_V3: deepseek_v3.DeepseekV3ForCausalLM}
        model = family.get(cfg.architecture, MoEForCausalLM)(cfg)
        if fmt is not None:
            drop_dense_experts(model.layers)  # experts arrive packed: never allocate them dense
    model = model.to_empty(device="cpu")
    model.rotary.__init__(cfg.rotary_dim, cfg.max_position_embeddings, cfg.rope_theta, cfg.rope)  # type: ignore[misc]
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.embed.weight
    if oss:
        targets = gpt_oss.targets(model, cfg)
    elif ds:
        targets = deepseek_v3.targets(model, cfg, skip_experts=fmt is not None)
    else:
        targets = _targets(model, cfg, skip_experts=fmt is not None)
    tied: dict[str, torch.Tensor] = {}
    done: set[str] = set()
    if oss:
        targets.update(dict.fromkeys(gpt_oss.expert_names(cfg, fmt is not None)))  # type: ignore[arg-type]
    packed: dict[str, torch.Tensor] = {}
    for file in _files(path):
        with safe_open(str(file), framework="pt") as fh:
            for name in fh.keys():
                src = fh.get_tensor(name)
                if fmt is not None and is_fp4_tensor(name, fmt):
                    packed[name] = src
                    done.add(name)
                elif oss and gpt_oss.load_expert_tensor(model, name, src):
                    done.add(name)
                elif ds and name.startswith(f"model.layers.{cfg.num_layers}.") and name.endswith(deepseek_v3.TIED_MTP):
                    tied[name] = src
                elif name in targets:
                    _copy(name, targets[name], src)
                    done.add(name)
                elif _load_fused(name, src, model, targets, done):
                    continue
                elif name == "lm_head.weight" and cfg.tie_word_embeddings:
                    continue
                else:
                    raise ModelLoadError(f"unknown tensor {name} in {file.name} for {cfg.architecture}")
    if ds:
        deepseek_v3.check_tied_mtp(model, cfg, tied)
    missing = sorted(set(targets) - done)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ModelLoadError(f"missing tensor {missing[0]}{more} in {path}")
    if fmt is not None:
        for i, layer in enumerate(model.layers):
            if cfg.is_sparse(i):
                experts = import_experts(cfg, i, fmt, packed)
                layer.mlp.quantized = gpt_oss.deinterleave_fp4(experts) if oss else experts  # type: ignore[union-attr]
        if packed:
            raise ModelLoadError(f"unknown tensor {sorted(packed)[0]} in {path} for {fmt}")
    model = model.to(device=device, dtype=dtype)
    model.rotary.float()  # RoPE tables stay fp32 whatever the serving dtype
    for layer in model.layers:
        q = getattr(layer.mlp, "quantized", None)
        if q is not None:
            layer.mlp.quantized = q.to(device)  # type: ignore[union-attr]
    return model, cfg


def hf_config(cfg: ModelConfig) -> dict[str, Any]:
    """A Qwen3-MoE config.json dict that transformers accepts."""
    return {
        "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim, "num_experts": cfg.num_experts,
        "num_experts_per_tok": cfg.num_experts_per_tok, "moe_intermediate_size": cfg.moe_intermediate_size,
        "intermediate_size": cfg.intermediate_size or 4 * cfg.hidden_size, "norm_topk_prob": cfg.norm_topk_prob,
        "rms_norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_theta, "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings, "attention_bias": cfg.attention_bias, "hidden_act": "silu",
        "mlp_only_layers": list(cfg.mlp_only_layers), "decoder_sparse_step": cfg.decoder_sparse_step,
        "eos_token_id": list(cfg.eos_token_id) if len(cfg.eos_token_id) != 1 else cfg.eos_token_id[0],
        "bos_token_id": cfg.bos_token_id, "mtp_num_layers": cfg.mtp_num_layers, "torch_dtype": "bfloat16",
    }


def save_model(model: MoEForCausalLM, path: str | Path, dtype: torch.dtype = torch.bfloat16, max_shard_bytes: int = 15 << 20) -> None:
    """Write config.json + the base weights (Qwen3-MoE names; HF-style shards with an index when
    larger than `max_shard_bytes`) and, with MTP, mtp.safetensors. When the decoder layers' experts
    are FP4 (`MoE.quantized`), they are written packed in their format's checkpoint layout
    (engine/model/fp4_checkpoint.py) and config.json carries the quantization_config."""
    if model.config.architecture != "Qwen3MoeForCausalLM":
        raise ModelLoadError("save_model writes the Qwen3-MoE layout only")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    quantized = [getattr(layer.mlp, "quantized", None) for layer in model.layers]
    fmts = {q.fmt for q in quantized if q is not None}
    if len(fmts) > 1 or (fmts and any(q is None for i, q in enumerate(quantized) if cfg.is_sparse(i))):
        raise ModelLoadError("save_model needs every MoE layer quantised to the same format, or none")
    fmt = fmts.pop() if fmts else None
    base: dict[str, torch.Tensor] = {}
    mtp: dict[str, torch.Tensor] = {}
    for name, view in _targets(model, cfg, skip_experts=fmt is not None).items():
        (mtp if name.startswith("mtp.") else base)[name] = view.detach().to("cpu", dtype).contiguous()
    for i, q in enumerate(quantized):
        if q is not None:
            base.update({k: v.cpu() for k, v in export_tensors(cfg, i, q.to("cpu")).items()})
    _save_sharded(base, path, max_shard_bytes)
    if mtp:
        save_file(mtp, str(path / "mtp.safetensors"), metadata={"format": "pt"})
    config = hf_config(cfg)
    if fmt is not None:
        config["quantization_config"] = QUANT_CONFIGS[fmt]
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def _save_sharded(tensors: dict[str, torch.Tensor], path: Path, max_shard_bytes: int) -> None:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    for old in path.glob("model*.safetensors"):
        old.unlink()
    if len(shards) == 1:
        save_file(shards[0], str(path / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, fname))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
