"""CUDA graphs of the decode and speculative-verification forwards: one graph per (rows per
sequence, padded batch size), replayed for every step in which each sequence brings the same number
of new rows (1 for decode, k + 1 for verification of k drafts), so a step costs a few copies and
one graph launch instead of hundreds of kernel launches from Python.

What makes the forward capturable: attention reads its sizes from device tensors (the Triton paged
decode kernel for one row per sequence, the varlen kernel for several, engine/kernels/triton/), the
fused MoE sorts tokens by expert without a host sync (engine/moe/triton_moe.py), and the graph's
inputs live in static buffers that each step fills; with a fixed row count per sequence the
query offsets (cu_query_lens) of a graph are constants. Rows past the batch (padding up to the
captured size) write their K/V to a null block that no sequence owns (the cache has one block more
than the scheduler hands out) and attend over it; their outputs are discarded.

Graphs are captured lazily, the first time a key is needed. If capture fails (an op that cannot be
captured, say), the error is logged once and that key runs eagerly from then on.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from engine.model.attention import AttentionMetadata, KVCache

logger = logging.getLogger(__name__)

BATCH_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64)
MAX_ROWS_PER_SEQ = 8  # verification of up to 7 drafts per sequence runs as a graph


def bucket(sizes: list[int], num_seqs: int) -> int | None:
    """The smallest captured batch size that holds `num_seqs` sequences (None: too many)."""
    return next((b for b in sizes if b >= num_seqs), None)


def graph_key(query_lens: list[int], sizes: list[int], max_rows: int = MAX_ROWS_PER_SEQ) -> tuple[int, int] | None:
    """(rows per sequence, padded batch size) of the graph that serves a step, or None when no
    graph can: sequences with different row counts (a prefill chunk beside decodes), more rows per
    sequence than `max_rows`, more sequences than the largest size, or an empty step."""
    if not query_lens or any(q != query_lens[0] for q in query_lens) or not 1 <= query_lens[0] <= max_rows:
        return None
    size = bucket(sizes, len(query_lens))
    return None if size is None else (query_lens[0], size)


class DecodeGraphs:
    """Captured forwards (`model.forward_prenorm`) for steps with a fixed row count per sequence
    (decode: 1, verification: k + 1) at the batch sizes in BATCH_SIZES."""

    def __init__(self, model: Any, kv_cache: KVCache, null_block: int, max_blocks_per_seq: int, max_batch: int,
                 max_rows: int = MAX_ROWS_PER_SEQ) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.max_rows = max_rows
        self.sizes = [b for b in BATCH_SIZES if b <= max(1, max_batch)]
        if max_batch > self.sizes[-1]:
            self.sizes.append(max_batch)
        n, device = self.sizes[-1], kv_cache.k.device
        self.null_block = null_block
        self.null_slot = null_block * kv_cache.block_size
        self.input_ids = torch.zeros(n * max_rows, dtype=torch.long, device=device)
        self.positions = torch.zeros(n * max_rows, dtype=torch.long, device=device)
        self.slots = torch.full((n * max_rows,), self.null_slot, dtype=torch.long, device=device)
        self.context_lens = torch.ones(n, dtype=torch.long, device=device)
        self.block_tables = torch.full((n, max_blocks_per_seq), null_block, dtype=torch.long, device=device)
        self.cu: dict[tuple[int, int], torch.Tensor] = {}  # constant query offsets per graph key
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self.outputs: dict[tuple[int, int], torch.Tensor] = {}
        self.failed: set[tuple[int, int]] = set()
        self.pool: Any = None
        self.replays = 0

    @property
    def disabled(self) -> bool:
        """Whether decode (one row per sequence) capture failed: decode then runs eagerly."""
        return any(rows == 1 for rows, _ in self.failed)

    def bucket(self, num_seqs: int) -> int | None:
        """The smallest captured size that holds `num_seqs` rows (None: too many)."""
        return bucket(self.sizes, num_seqs)

    def _meta(self, key: tuple[int, int]) -> AttentionMetadata:
        rows, size = key
        if key not in self.cu:
            self.cu[key] = torch.arange(0, size * rows + 1, rows, dtype=torch.long, device=self.slots.device)
        return AttentionMetadata(
            slot_mapping=self.slots[: size * rows], query_lens=[rows] * size, context_lens=[rows] * size,
            cu_query_lens=list(range(0, size * rows + 1, rows)), block_tables=self.block_tables[:size],
            context_lens_t=self.context_lens[:size], max_context_len=rows, cu_query_lens_t=self.cu[key],
        )

    def _capture(self, key: tuple[int, int]) -> None:
        meta = self._meta(key)
        n = key[0] * key[1]
        ids, pos = self.input_ids[:n], self.positions[:n]
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
        self.graphs[key], self.outputs[key] = graph, out

    def fill(self, key: tuple[int, int], input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> bool:
        """Copy a step into the static buffers of graph `key`, padding rows pointed at the null
        block (a larger batch may have used them). False when the step's block tables are wider
        than the buffers (the caller then runs eagerly)."""
        rows, size = key
        num_seqs, width = meta.num_seqs, meta.block_tables.shape[1]
        if width > self.block_tables.shape[1]:
            return False
        n = num_seqs * rows
        self.input_ids[:n].copy_(input_ids)
        self.positions[:n].copy_(positions)
        self.slots[:n].copy_(meta.slot_mapping)
        self.context_lens[:num_seqs].copy_(meta.context_lens_t)
        self.block_tables[:num_seqs, :width].copy_(meta.block_tables)
        if size > num_seqs:
            self.slots[n : size * rows].fill_(self.null_slot)
            self.positions[n : size * rows] = torch.arange(rows, device=self.positions.device).repeat(size - num_seqs)
            self.context_lens[num_seqs:size].fill_(rows)
            self.block_tables[num_seqs:size].fill_(self.null_block)
        return True

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor | None:
        """The pre-norm hidden states [num_tokens, H] of a step with one row count per sequence,
        or None when no graph serves it (mixed row counts, too many sequences or rows, capture
        failed): the caller then runs the model eagerly."""
        key = graph_key(meta.query_lens, self.sizes, self.max_rows)
        if key is None or key in self.failed:
            return None
        if key not in self.graphs:
            try:
                self._capture(key)
            except Exception:  # noqa: BLE001 - any capture failure falls back to eager execution
                logger.exception("CUDA graph capture failed for %d rows x %d sequences; running those eagerly", *key)
                self.failed.add(key)
                return None
        if not self.fill(key, input_ids, positions, meta):
            return None
        self.graphs[key].replay()
        self.replays += 1
        return self.outputs[key][: meta.num_seqs * key[0]]
