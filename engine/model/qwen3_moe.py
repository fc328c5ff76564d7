"""MoEForCausalLM: the Qwen3-MoE / Mixtral decoder (one class; layouts differ only in names).

Optionally carries a DeepSeek-V3-style multi-token-prediction (MTP) module: from the last layer's
hidden state at position t and the embedding of token t+1 it predicts token t+2, through one extra
decoder layer that shares the embedding and the LM head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.kernels.cpu import decoder as cpu_decoder
from engine.model.attention import AttentionMetadata, KVCache
from engine.model.config import ModelConfig
from engine.model.layers import DecoderLayer, DenseMLP, MoE, RMSNorm, Rotary


class MTPModule(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_cls: type[nn.Module] = DecoderLayer) -> None:
        super().__init__()
        self.enorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.hnorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * cfg.hidden_size, cfg.hidden_size, bias=False)
        self.layer = layer_cls(cfg, cfg.num_layers)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class MoEForCausalLM(nn.Module):
    """The decoder: Qwen3-MoE, Mixtral, and (every layer dense) Qwen3 / Llama; families with
    other layers subclass it with their `layer_cls` (engine/model/gpt_oss.py)."""

    layer_cls: type[nn.Module] = DecoderLayer
    attention_in_torch = False  # DeepSeek-V3's latent attention: torch einsums around the kernel

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(self.layer_cls(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight
        self.rotary = Rotary(cfg.rotary_dim, cfg.max_position_embeddings, cfg.rope_theta, cfg.rope)
        self.mtp = MTPModule(cfg, self.layer_cls) if cfg.mtp_num_layers else None
        # CPU serving of an all-dense decoder: every layer in one C call (set by prepare_for_inference)
        self.cpu_stack: cpu_decoder.DecoderStack | None = None

    @property
    def cpu_thread_invariant(self) -> bool:
        """Whether, prepared for CPU serving, its steps of <= 32 rows per sequence run on the C
        kernels only (every MLP packed for them, attention not in torch), whose results do not depend
        on the thread count: then the runner may shed threads on a busy CPU (kernels/cpu/busy.py)."""
        mlps = [m for m in self.modules() if isinstance(m, (MoE, DenseMLP))]
        return not self.attention_in_torch and all(m.cpu_experts is not None for m in mlps)

    @property
    def tree_attention(self) -> bool:
        """Whether every layer's attention takes token trees (`AttentionMetadata.with_trees`, speculative
        tree verification): plain GQA through `paged_attention` (no window, sinks or latent attention),
        not the all-dense decoder's one C call per step."""
        return self.layer_cls is DecoderLayer and not self.attention_in_torch and self.cpu_stack is None

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, kv_cache: KVCache, meta: AttentionMetadata
    ) -> torch.Tensor:
        """Serving forward over a packed ragged batch: input_ids/positions [T] -> normed hidden [T, H]."""
        return self.norm(self.forward_prenorm(input_ids, positions, kv_cache, meta))

    def forward_prenorm(
        self, input_ids: torch.Tensor, positions: torch.Tensor, kv_cache: KVCache, meta: AttentionMetadata
    ) -> torch.Tensor:
        """Like `forward`, returning the last layer's output before the final norm [T, H]."""
        x = self.embed(input_ids)  # [T, H]
        cos_sin = self.rotary.tables(positions)
        if self.cpu_stack is not None and self.cpu_stack.supports(x, kv_cache.k, kv_cache.v, meta):
            return self.cpu_stack.run(x, *cos_sin, kv_cache.k, kv_cache.v, meta, meta.slot_mapping)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos_sin, (kv_cache.k[i], kv_cache.v[i]), meta)
        return x

    def forward_mtp(
        self, prenorm_hidden: torch.Tensor, next_input_ids: torch.Tensor, positions: torch.Tensor,
        kv_cache: KVCache, meta: AttentionMetadata,
    ) -> torch.Tensor:
        """Serving MTP over a packed batch: pre-norm hidden [T, H] at positions t and the ids [T] of
        tokens t+1 -> normed hidden [T, H] predicting t+2. Its attention KV lives in the cache's
        extra last layer (allocate num_layers + 1). Raises RuntimeError without an MTP module."""
        if self.mtp is None:
            raise RuntimeError("this model has no MTP module (mtp_num_layers == 0)")
        m = self.mtp
        h = torch.cat([m.enorm(self.embed(next_input_ids)), m.hnorm(prenorm_hidden)], dim=-1)
        n = self.config.num_layers
        x = m.layer(m.eh_proj(h), self.rotary.tables(positions), (kv_cache.k[n], kv_cache.v[n]), meta)
        return m.norm(x)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, H] normed hidden -> [N, vocab] fp32 logits."""
        return self.lm_head(hidden).float()

    def forward_dense(self, input_ids: torch.Tensor, *, return_prenorm: bool = False) -> torch.Tensor:
        """Full causal forward without a KV cache: input_ids [B, S] -> normed hidden [B, S, H].

        With `return_prenorm=True` returns the last layer's output before the final norm (what the
        MTP module consumes); autograd-friendly (training uses it)."""
        x = self.embed(input_ids)  # [B, S, H]
        for layer in self.layers:
            x = layer.forward_dense(x, self.rotary)  # type: ignore[operator]
        return x if return_prenorm else self.norm(x)

    def forward_mtp_dense(self, prenorm_hidden: torch.Tensor, next_input_ids: torch.Tensor) -> torch.Tensor:
        """MTP: hidden [B, S, H] at t (pre-norm) and token ids [B, S] at t+1 -> normed hidden whose
        logits predict token t+2. Raises RuntimeError when the model has no MTP module."""
        if self.mtp is None:
            raise RuntimeError("this model has no MTP module (mtp_num_layers == 0)")
        m = self.mtp
        h = torch.cat([m.enorm(self.embed(next_input_ids)), m.hnorm(prenorm_hidden)], dim=-1)
        x = m.layer.forward_dense(m.eh_proj(h), self.rotary)  # type: ignore[operator]
        return m.norm(x)

    def loss(self, input_ids: torch.Tensor, mtp_weight: float = 0.0, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Next-token cross-entropy (and the MTP t+2 loss when it has an MTP module) on [B, S] ids.

        `mask` [B, S] (1 = train on predicting this position's token) selects target positions."""
        pre = self.forward_dense(input_ids, return_prenorm=True)
        logits = self.compute_logits(self.norm(pre[:, :-1]))
        targets = input_ids[:, 1:]
        m1 = None if mask is None else mask[:, 1:]
        base = _masked_ce(logits, targets, m1)
        if self.mtp is None or mtp_weight == 0.0:
            return base, None
        h2 = self.forward_mtp_dense(pre[:, :-2], input_ids[:, 1:-1])
        mtp = _masked_ce(self.compute_logits(h2), input_ids[:, 2:], None if mask is None else mask[:, 2:])
        return base, mtp


def _masked_ce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    if mask is None:
        return ce.mean()
    m = mask.flatten().float()
    return (ce * m).sum() / m.sum().clamp(min=1.0)
