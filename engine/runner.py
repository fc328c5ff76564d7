"""Batch -> tensors -> model -> sampled tokens. The only place that launches device work."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from engine.config import EngineConfig
from engine.model.attention import AttentionMetadata, KVCache
from engine.model.config import ModelConfig
from engine.sampler import sample
from engine.scheduler import ScheduledBatch
from engine.structured import mask_logits

logger = logging.getLogger(__name__)


def kv_bytes_per_block(model_config: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    per_token = 2 * model_config.num_layers * model_config.num_kv_heads * model_config.head_dim
    return per_token * block_size * torch.empty((), dtype=dtype).element_size()


class ModelRunner:
    """Owns the model and the KV cache; runs one scheduled batch per `execute` call."""

    def __init__(
        self, model: Any, model_config: ModelConfig, config: EngineConfig, num_blocks: int
    ) -> None:
        self.model = model
        self.model_config = model_config
        self.config = config
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.kv_cache = KVCache.allocate(
            model_config.num_layers,
            num_blocks,
            config.block_size,
            model_config.num_kv_heads,
            model_config.head_dim,
            self.dtype,
            self.device,
        )
        logger.info("KV cache: %d blocks of %d tokens on %s", num_blocks, config.block_size, self.device)

    def prepare(self, batch: ScheduledBatch) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        token_ids: list[int] = []
        positions: list[int] = []
        context_lens: list[int] = []
        for seq, num_new in zip(batch.seqs, batch.num_new_tokens, strict=True):
            start = seq.num_computed_tokens
            token_ids.extend(seq.token_ids[start : start + num_new])
            positions.extend(range(start, start + num_new))
            context_lens.append(start + num_new)
        meta = AttentionMetadata.build(
            batch.num_new_tokens,
            context_lens,
            [seq.block_table for seq in batch.seqs],
            self.config.block_size,
            self.device,
        )
        input_ids = torch.tensor(token_ids, dtype=torch.long, device=self.device)  # [num_tokens]
        pos = torch.tensor(positions, dtype=torch.long, device=self.device)  # [num_tokens]
        return input_ids, pos, meta

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch) -> tuple[list[int | None], float]:
        """Run the batch; return the sampled token of every sequence that reached its end (else
        None) and the step's device seconds."""
        start = time.perf_counter()
        input_ids, positions, meta = self.prepare(batch)
        hidden = self.model(input_ids, positions, self.kv_cache, meta)  # [num_tokens, hidden]
        rows = [i for i in range(len(batch)) if batch.samples(i)]
        tokens: list[int | None] = [None] * len(batch)
        if rows:
            last = torch.tensor([meta.cu_query_lens[i + 1] - 1 for i in rows], device=self.device)
            logits = self.model.compute_logits(hidden.index_select(0, last))  # [num_rows, vocab]
            for row, i in enumerate(rows):
                matcher = batch.seqs[i].matcher
                if matcher is not None:
                    mask_logits(logits[row], matcher, logits.shape[-1])  # type: ignore[arg-type]
            sampled = sample(
                logits,
                [batch.seqs[i].params for i in rows],
                [batch.seqs[i].generator for i in rows],
            )
            for i, tok in zip(rows, sampled, strict=True):
                tokens[i] = tok
                matcher = batch.seqs[i].matcher
                if matcher is not None:
                    matcher.accept_token(tok)  # type: ignore[attr-defined]
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return tokens, time.perf_counter() - start
