"""ModelConfig: the architecture hyper-parameters the engine needs, parsed from a HF config.json."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import ModelLoadError
from engine.model.rope import RopeScaling

MOE = ("Qwen3MoeForCausalLM", "MixtralForCausalLM")
DENSE = ("Qwen3ForCausalLM", "LlamaForCausalLM")
GPT_OSS = "GptOssForCausalLM"
DEEPSEEK_V3 = "DeepseekV3ForCausalLM"
SUPPORTED = MOE + DENSE + (GPT_OSS, DEEPSEEK_V3)
WINDOWED = (GPT_OSS,)  # architectures whose attention honours sliding_window / layer_types


@dataclass(slots=True)
class ModelConfig:
    """Decoder-only transformer hyper-parameters (MoE, or dense with num_experts == 0).
    Validated in __post_init__ (ModelLoadError)."""

    architecture: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    num_experts: int
    num_experts_per_tok: int
    moe_intermediate_size: int
    intermediate_size: int = 0  # dense MLP layers (Qwen3 mlp_only_layers)
    norm_topk_prob: bool = True
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    qk_norm: bool = False
    attention_bias: bool = False
    mlp_only_layers: tuple[int, ...] = ()
    decoder_sparse_step: int = 1
    eos_token_id: tuple[int, ...] = ()
    bos_token_id: int | None = None
    mtp_num_layers: int = 0
    rope: RopeScaling = field(default_factory=RopeScaling)
    sliding_window: int = 0  # keys a sliding-attention layer sees (itself included); 0 = none
    layer_types: tuple[str, ...] = ()  # per layer "full_attention" / "sliding_attention" (empty: all full)
    swiglu_limit: float = 0.0  # gpt-oss clamped SwiGLU (0 = plain SwiGLU)
    swiglu_alpha: float = 1.0
    # DeepSeek-V3 multi-head latent attention (kv_lora_rank > 0): the cache entry is the latent
    # [kv_lora_rank + qk_rope_head_dim] (num_kv_heads 1, head_dim that sum, no separate V).
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    rope_interleave: bool = False
    # DeepSeek-V3 routing (noaux_tc): sigmoid scores + correction bias, top-k within the best groups
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    n_shared_experts: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.architecture not in SUPPORTED:
            raise ModelLoadError(f"unsupported architecture {self.architecture!r}; supported: {', '.join(SUPPORTED)}")
        if self.num_heads % self.num_kv_heads:
            raise ModelLoadError(f"num_attention_heads {self.num_heads} is not a multiple of num_key_value_heads {self.num_kv_heads}")
        if self.num_experts and not 1 <= self.num_experts_per_tok <= self.num_experts:
            raise ModelLoadError(f"num_experts_per_tok {self.num_experts_per_tok} must be in [1, {self.num_experts}]")
        if self.layer_types and len(self.layer_types) != self.num_layers:
            raise ModelLoadError(f"layer_types has {len(self.layer_types)} entries for {self.num_layers} layers")
        if self.mtp_num_layers not in (0, 1):
            raise ModelLoadError(f"mtp_num_layers must be 0 or 1, got {self.mtp_num_layers}")

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def rotary_dim(self) -> int:
        """The dimensions RoPE rotates (MLA: only the rope part of each head)."""
        return self.qk_rope_head_dim if self.is_mla else self.head_dim

    @property
    def kv_dims(self) -> tuple[int, int]:
        """Per KV head and token, the (K, V) cache widths; MLA keeps only the latent (V width 0)."""
        return (self.head_dim, 0) if self.is_mla else (self.head_dim, self.head_dim)

    def window(self, layer: int) -> int:
        """The sliding window of layer `layer` (0: full attention)."""
        return self.sliding_window if self.layer_types and self.layer_types[layer] == "sliding_attention" else 0

    def is_sparse(self, layer: int) -> bool:
        """Whether layer `layer` has a MoE MLP (Qwen3's mlp_only_layers / decoder_sparse_step rule)."""
        return self.num_experts > 0 and layer not in self.mlp_only_layers and (layer + 1) % self.decoder_sparse_step == 0

    @classmethod
    def from_hf(cls, source: str | Path | dict[str, Any]) -> ModelConfig:
        """Parse a HF config (a dict, a config.json path or a model directory)."""
        if isinstance(source, dict):
            raw = source
        else:
            path = Path(source)
            path = path / "config.json" if path.is_dir() else path
            try:
                raw = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise ModelLoadError(f"cannot read model config {path}: {exc}") from exc
        archs = raw.get("architectures") or [raw.get("model_type", "?")]
        arch = archs[0]
        if arch not in SUPPORTED:
            raise ModelLoadError(f"unsupported architecture {arch!r}; supported: {', '.join(SUPPORTED)}")
        refuse_unsupported(arch, raw)
        return _parse(arch, raw)


# Config fields that change the math, and the values this engine computes; any other value raises.
_FIXED: dict[str, tuple[Any, ...]] = {
    "hidden_act": ("silu", None), "mlp_bias": (False, None), "use_sliding_window": (False, None),
    "sliding_window": (None,), "attn_logit_softcapping": (None,), "final_logit_softcapping": (None,),
    "pretraining_tp": (1, None), "use_qk_norm": (None,),
}


def refuse_unsupported(arch: str, raw: dict[str, Any]) -> None:
    """Raise ModelLoadError naming the first config field whose value this engine would compute
    differently from the reference (rather than silently ignoring it)."""
    windowed = arch in WINDOWED
    for key, allowed in _FIXED.items():
        if windowed and key == "sliding_window":
            continue
        if key in raw and raw[key] not in allowed:
            if key == "sliding_window" and not raw.get("use_sliding_window", True) and arch != "MixtralForCausalLM":
                continue  # Qwen keeps a window size that only applies with use_sliding_window
            raise ModelLoadError(f"config field {key}={raw[key]!r} is not supported for {arch}")
    kinds = set(raw.get("layer_types") or ()) - {"full_attention", *(("sliding_attention",) if windowed else ())}
    if kinds:
        raise ModelLoadError(f"config field layer_types has {sorted(kinds)[0]!r}, not supported for {arch}")
    RopeScaling.from_hf(raw)  # raises on an unsupported rope type or field


def _parse(arch: str, raw: dict[str, Any]) -> ModelConfig:
    try:
        heads = raw["num_attention_heads"]
        hidden = raw["hidden_size"]
        rope = RopeScaling.from_hf(raw)
        eos = raw.get("eos_token_id")
        qwen = arch in ("Qwen3MoeForCausalLM", "Qwen3ForCausalLM")
        dense = arch in DENSE
        oss = arch == GPT_OSS
        if arch == DEEPSEEK_V3:
            return _parse_deepseek(raw, rope)
        return ModelConfig(
            architecture=arch,
            vocab_size=raw["vocab_size"],
            hidden_size=hidden,
            num_layers=raw["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=raw.get("num_key_value_heads") or heads,
            head_dim=raw.get("head_dim") or hidden // heads,
            num_experts=0 if dense else raw.get("num_experts") or raw["num_local_experts"],
            num_experts_per_tok=0 if dense else raw["num_experts_per_tok"],
            moe_intermediate_size=0 if dense else raw["moe_intermediate_size"] if qwen else raw["intermediate_size"],
            intermediate_size=raw.get("intermediate_size", 0),
            norm_topk_prob=bool(raw.get("norm_topk_prob", False)) if qwen and not dense else True,
            rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
            rope_theta=rope.theta,
            max_position_embeddings=raw.get("max_position_embeddings", 4096),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            qk_norm=qwen,
            attention_bias=bool(raw.get("attention_bias", oss)),
            mlp_only_layers=tuple(raw.get("mlp_only_layers") or ()) if qwen and not dense else (),
            decoder_sparse_step=raw.get("decoder_sparse_step", 1) if qwen and not dense else 1,
            eos_token_id=tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,)),
            bos_token_id=raw.get("bos_token_id"),
            mtp_num_layers=raw.get("mtp_num_layers", 0),
            rope=rope,
            sliding_window=int(raw.get("sliding_window") or 0) if oss else 0,
            layer_types=tuple(raw.get("layer_types") or ()) if oss else (),
            swiglu_limit=float(raw.get("swiglu_limit", 7.0)) if oss else 0.0,
            swiglu_alpha=float(raw.get("swiglu_alpha", 1.702)) if oss else 1.0,
        )
    except KeyError as exc:
        raise ModelLoadError(f"config.json lacks required field {exc.args[0]!r} for {arch}") from exc


def _parse_deepseek(raw: dict[str, Any], rope: RopeScaling) -> ModelConfig:
    for key, want in (("topk_method", "noaux_tc"), ("scoring_func", "sigmoid")):
        if raw.get(key, want) != want:
            raise ModelLoadError(f"config field {key}={raw[key]!r} is not supported for {DEEPSEEK_V3} (only {want!r})")
    mtp = raw.get("num_nextn_predict_layers", 0)
    if mtp not in (0, 1):
        raise ModelLoadError(f"config field num_nextn_predict_layers={mtp} is not supported (0 or 1)")
    eos = raw.get("eos_token_id")
    rank, rope_dim = raw["kv_lora_rank"], raw["qk_rope_head_dim"]
    return ModelConfig(
        architecture=DEEPSEEK_V3, vocab_size=raw["vocab_size"], hidden_size=raw["hidden_size"],
        num_layers=raw["num_hidden_layers"], num_heads=raw["num_attention_heads"], num_kv_heads=1,
        head_dim=rank + rope_dim, num_experts=raw["n_routed_experts"], num_experts_per_tok=raw["num_experts_per_tok"],
        moe_intermediate_size=raw["moe_intermediate_size"], intermediate_size=raw["intermediate_size"],
        norm_topk_prob=bool(raw.get("norm_topk_prob", True)), rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
        rope_theta=rope.theta, max_position_embeddings=raw.get("max_position_embeddings", 4096),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)), attention_bias=bool(raw.get("attention_bias", False)),
        mlp_only_layers=tuple(range(raw.get("first_k_dense_replace", 0))),
        eos_token_id=tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,)),
        bos_token_id=raw.get("bos_token_id"), mtp_num_layers=mtp, rope=rope,
        q_lora_rank=raw.get("q_lora_rank") or 0, kv_lora_rank=rank, qk_nope_head_dim=raw["qk_nope_head_dim"],
        qk_rope_head_dim=rope_dim, v_head_dim=raw["v_head_dim"], rope_interleave=bool(raw.get("rope_interleave", True)),
        n_group=raw.get("n_group") or 1, topk_group=raw.get("topk_group") or 1,
        routed_scaling_factor=float(raw.get("routed_scaling_factor", 1.0)), n_shared_experts=raw.get("n_shared_experts") or 0,
    )
