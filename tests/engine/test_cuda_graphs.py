"""CUDA-graph keying, bucketing and padding (the host-side logic runs on CPU tensors); capture and
replay of decode and verification graphs are checked on a GPU (marked gpu)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.cuda_graphs import DecodeGraphs, bucket, graph_key
from engine.model.attention import AttentionMetadata, KVCache

SIZES = [1, 2, 4, 8]


def test_graph_key_is_rows_per_sequence_and_padded_batch() -> None:
    assert graph_key([1, 1, 1], SIZES) == (1, 4)  # decode: 3 sequences in the graph of 4
    assert graph_key([4] * 5, SIZES) == (4, 8)  # verification of 3 drafts per sequence
    assert graph_key([1], SIZES) == (1, 1)
    assert bucket(SIZES, 9) is None and graph_key([1] * 9, SIZES) is None  # more sequences than captured
    assert graph_key([4, 1], SIZES) is None  # mixed row counts: eager
    assert graph_key([9, 9], SIZES, max_rows=8) is None  # too many rows per sequence
    assert graph_key([], SIZES) is None


def _graphs() -> DecodeGraphs:
    cache = KVCache.allocate(1, 12, 4, 1, 16, torch.float32, "cpu")
    return DecodeGraphs(model=None, kv_cache=cache, null_block=11, max_blocks_per_seq=4, max_batch=8)


def test_fill_copies_the_step_and_points_padding_rows_at_the_null_block() -> None:
    g = _graphs()
    big = AttentionMetadata.build([2] * 4, [6, 7, 5, 8], [[0, 1], [2, 3], [4, 5], [6, 7]], 4, "cpu")
    assert g.fill((2, 4), torch.arange(8), torch.arange(8), big)  # a larger batch leaves real blocks behind
    meta = AttentionMetadata.build([3, 3, 3], [5, 9, 3], [[0, 1], [2, 3, 4], [5]], 4, "cpu")
    ids = torch.arange(100, 109)
    assert g.fill((3, 4), ids, torch.arange(9), meta)
    assert g.input_ids[:9].tolist() == ids.tolist()
    assert g.slots[:9].tolist() == meta.slot_mapping.tolist()
    assert g.slots[9:12].tolist() == [g.null_slot] * 3  # the fourth (padding) sequence's rows
    assert g.positions[9:12].tolist() == [0, 1, 2]
    assert g.context_lens[:4].tolist() == [5, 9, 3, 3]
    assert g.block_tables[3].tolist() == [11] * 4  # no block of the earlier batch is read or written
    assert g.block_tables[1, :3].tolist() == [2, 3, 4]


def test_graph_metadata_has_constant_query_offsets() -> None:
    meta = _graphs()._meta((3, 4))
    assert meta.cu_query_lens == [0, 3, 6, 9, 12] and meta.cu_query_lens_t is not None
    assert meta.cu_query_lens_t.tolist() == meta.cu_query_lens
    assert not meta.is_decode and meta.max_query_len == 3 and meta.slot_mapping.numel() == 12


def test_wide_block_tables_and_mixed_steps_run_eagerly() -> None:
    g = _graphs()
    wide = AttentionMetadata.build([1], [20], [[0, 1, 2, 3, 4]], 4, "cpu")
    assert not g.fill((1, 1), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), wide)
    mixed = AttentionMetadata.build([3, 1], [3, 2], [[0], [1]], 4, "cpu")
    assert g.run(torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long), mixed) is None  # no capture tried
    assert not g.graphs and not g.failed


@pytest.mark.gpu
def test_verification_graphs_equal_eager_speculation(tiny_qwen: Path) -> None:
    from engine import LLM, SamplingParams

    prompts = [[5, 6, 7, 8] * 6, [3, 4, 5] * 7, list(range(2, 30))]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    opts = {"device": "cuda", "dtype": "float32", "num_kv_blocks": 128, "block_size": 4}
    eager = LLM(tiny_qwen, speculative="ngram", num_speculative_tokens=3, cuda_graphs=False, **opts)  # type: ignore[arg-type]
    graphed = LLM(tiny_qwen, speculative="ngram", num_speculative_tokens=3, **opts)  # type: ignore[arg-type]
    assert [o.token_ids for o in graphed.generate(prompts, params)] == [o.token_ids for o in eager.generate(prompts, params)]
    for p in prompts:  # one sequence: every verification step has one row count, so it replays a graph
        assert graphed.generate([p], params)[0].token_ids == eager.generate([p], params)[0].token_ids
    graphs = graphed.core.runner.graphs
    assert graphs is not None and not graphs.failed and any(rows > 1 for rows, _ in graphs.graphs)
