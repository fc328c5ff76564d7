"""CUDA graphs of the decode forward: one graph per padded batch size, replayed for every pure
decode step (one new token per sequence), so a step costs a few copies and one graph launch
instead of hundreds of kernel launches from Python.

What makes the forward capturable: attention reads its sizes from device tensors (the Triton
paged decode kernel, engine/model/triton_attention.py), the fused MoE sorts tokens by expert
without a host sync (engine/moe/triton_moe.py), and the graph's inputs live in static buffers
that each step fills. Rows past the batch (padding up to the captured size) write their K/V to a
null block that no sequence owns (the cache has one block more than the scheduler hands out) and
attend over one token of it; their outputs are discarded.

Graphs are captured lazily, the first time a batch size is needed. If capture fails (an op that
cannot be captured, say), the error is logged once and the engine runs eagerly from then on.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from engine.model.attention import AttentionMetadata, KVCache

logger = logging.getLogger(__name__)

BATCH_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64)


class DecodeGraphs:
    """Captured decode forwards (`model.forward_prenorm`) for the batch sizes in BATCH_SIZES."""

    def __init__(self, model: Any, kv_cache: KVCache, null_block: int, max_blocks_per_seq: int, max_batch: int) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.sizes = [b for b in BATCH_SIZES if b <= max(1, max_batch)]
        if max_batch > self.sizes[-1]:
            self.sizes.append(max_batch)
        n, device = self.sizes[-1], kv_cache.k.device
        self.null_slot = null_block * kv_cache.block_size
        self.input_ids = torch.zeros(n, dtype=torch.long, device=device)
        self.positions = torch.zeros(n, dtype=torch.long, device=device)
        self.slots = torch.full((n,), self.null_slot, dtype=torch.long, device=device)
        self.context_lens = torch.ones(n, dtype=torch.long, device=device)
        self.block_tables = torch.full((n, max_blocks_per_seq), null_block, dtype=torch.long, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.pool: Any = None
        self.disabled = False
        self.replays = 0

    def bucket(self, num_seqs: int) -> int | None:
        """The smallest captured size that holds `num_seqs` rows (None: too many)."""
        return next((b for b in self.sizes if b >= num_seqs), None)

    def _meta(self, size: int) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self.slots[:size], query_lens=[1] * size, context_lens=[1] * size,
            cu_query_lens=list(range(size + 1)), block_tables=self.block_tables[:size],
            context_lens_t=self.context_lens[:size], max_context_len=1,
        )

    def _capture(self, size: int) -> None:
        meta = self._meta(size)
        ids, pos = self.input_ids[:size], self.positions[:size]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm up (compiles the Triton kernels) outside the capture
            for _ in range(2):
                self.model.forward_prenorm(ids, pos, self.kv_cache, meta)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            out = self.model.forward_prenorm(ids, pos, self.kv_cache, meta)
        self.pool = graph.pool()
        self.graphs[size], self.outputs[size] = graph, out

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor | None:
        """The pre-norm hidden states [num_seqs, H] of a pure decode step, or None when no graph
        serves it (too many sequences, capture failed): the caller then runs the model eagerly."""
        num_seqs = meta.num_seqs
        size = self.bucket(num_seqs)
        if self.disabled or size is None:
            return None
        if size not in self.graphs:
            try:
                self._capture(size)
            except Exception:  # noqa: BLE001 - any capture failure falls back to eager execution
                logger.exception("CUDA graph capture failed at batch size %d; decoding eagerly from now on", size)
                self.disabled = True
                return None
        width = meta.block_tables.shape[1]
        if width > self.block_tables.shape[1]:
            return None
        self.input_ids[:num_seqs].copy_(input_ids)
        self.positions[:num_seqs].copy_(positions)
        self.slots[:num_seqs].copy_(meta.slot_mapping)
        self.context_lens[:num_seqs].copy_(meta.context_lens_t)
        self.block_tables[:num_seqs, :width].copy_(meta.block_tables)
        if size > num_seqs:  # padding rows: back to the null block (a larger batch may have used them)
            self.slots[num_seqs:size].fill_(self.null_slot)
            self.context_lens[num_seqs:size].fill_(1)
            self.block_tables[num_seqs:size, 0].fill_(self.null_slot // self.kv_cache.block_size)
        self.graphs[size].replay()
        self.replays += 1
        return self.outputs[size][:num_seqs]
