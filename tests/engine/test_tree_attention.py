"""Token-tree attention (speculative tree verification): the C two-pass path against its masked
torch twin, and a tree node verified deep in a branch against the same token decoded alone."""

from __future__ import annotations

import pytest
import torch

from engine.kernels.cpu import attention as cpu_attention
from engine.model.attention import AttentionMetadata
from engine.model.paged_attention import paged_attention, paged_tree_attention_torch, tree_mask
from tests.engine.test_cpu_attention import _case

# A tree of 12 new tokens: 0 is the last accepted token; two branches off it, a sub-branch at 3.
PARENTS = [-1, 0, 1, 2, 0, 4, 3, 5, 6, 2, 9, 7]


def _depth(parents: list[int], t: int) -> int:
    return 0 if parents[t] < 0 else _depth(parents, parents[t]) + 1


def _path(parents: list[int], t: int) -> list[int]:
    out = []
    while t >= 0:
        out.append(t)
        t = parents[t]
    return out[::-1]


def test_tree_mask() -> None:
    m = tree_mask([-1, 0, 0, 2], 3)
    assert m.tolist() == [[True, True, True, True, False, False, False],
                          [True, True, True, True, True, False, False],
                          [True, True, True, True, False, True, False],
                          [True, True, True, True, False, True, True]]


def test_parents_must_precede_children() -> None:
    _, _, _, meta = _case([3], [40], (4, 2, 64), 16, seed=1)
    with pytest.raises(ValueError, match="precede"):
        meta.with_trees([[-1, 2, 0]])


def test_torch_twin_of_a_chain_is_causal_attention() -> None:
    """A chain (each token's parent the one before it) is ordinary causal attention."""
    q, k, v, meta = _case([5, 3], [60, 33], (4, 2, 64), 16, seed=2)
    ref = paged_attention(q, k, v, meta, 0.125)
    meta.with_trees([[-1, 0, 1, 2, 3], None])
    torch.testing.assert_close(paged_tree_attention_torch(q, k, v, meta, 0.125), ref, atol=2e-5, rtol=1e-5)


pytestmark_tree = pytest.mark.skipif(not (cpu_attention.available() and cpu_attention.tree_supported(64)),
                                     reason="no two-pass C path (AVX2 without AVX-512) on this CPU")


@pytestmark_tree
@pytest.mark.parametrize(("heads", "block_size", "ctx"), [((4, 2, 64), 16, 300), ((8, 1, 128), 8, 77), ((2, 2, 32), 64, 140),
                                                         ((4, 2, 64), 16, 12)])
def test_kernel_tree_equals_torch_twin(heads: tuple[int, int, int], block_size: int, ctx: int) -> None:
    q_len = len(PARENTS)
    q, k, v, meta = _case([2, q_len, 1], [50, ctx, 90], heads, block_size, seed=ctx)
    meta.with_trees([None, PARENTS, None])
    scale = heads[2] ** -0.5
    ref = paged_tree_attention_torch(q, k, v, meta, scale)
    assert meta.tree_parents is not None
    torch.testing.assert_close(cpu_attention.paged_attention(q, k, v, meta, scale, parents=meta.tree_parents), ref, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(paged_attention(q, k, v, meta, scale), ref, atol=2e-5, rtol=1e-5)  # the dispatcher picks it


@pytestmark_tree
@pytest.mark.parametrize(("block_size", "ctx"), [(16, 300), (12, 205), (16, 13)])  # 12: keys past a block's last multiple of 8
def test_a_tree_node_equals_the_same_token_decoded_alone(block_size: int, ctx: int) -> None:
    """Each node of the tree, verified among the other branches, equals bitwise the same token decoded
    alone after its path was written at consecutive positions (what KV compaction leaves), with NaN
    in the unwritten slots after it in both: greedy tree verification reproduces plain decoding."""
    heads, q_len = (4, 2, 64), len(PARENTS)
    q, k, v, meta = _case([q_len], [ctx], heads, block_size, seed=block_size + ctx)
    table, prefix = meta.block_table_lists[0], ctx - q_len

    def slot(pos: int) -> tuple[int, int]:
        return table[pos // block_size], pos % block_size

    kt, vt = k.clone(), v.clone()
    last_b, last_o = slot(ctx - 1)
    kt[last_b, last_o + 1 :] = vt[last_b, last_o + 1 :] = float("nan")  # unwritten slots after the tree's
    meta.with_trees([PARENTS])
    tree = paged_attention(q, kt, vt, meta, 0.125)
    for t in range(q_len):
        path = _path(PARENTS, t)
        ka, va = k.clone(), v.clone()
        for i, node in enumerate(path):  # compaction: the path's KV at positions prefix + depth
            ka[slot(prefix + i)] = k[slot(prefix + node)]
            va[slot(prefix + i)] = v[slot(prefix + node)]
        end = prefix + len(path)
        for pos in range(end, ctx):  # whatever else the block holds after the path: NaN
            ka[slot(pos)] = va[slot(pos)] = float("nan")
        b, o = slot(end - 1)
        ka[b, o + 1 :] = va[b, o + 1 :] = float("nan")
        alone = AttentionMetadata.build([1], [end], [table], block_size, "cpu")
        assert _depth(PARENTS, t) == len(path) - 1
        assert torch.equal(paged_attention(q[t : t + 1], ka, va, alone, 0.125)[0], tree[t]), t


@pytestmark_tree
def test_trees_are_refused_where_the_two_pass_path_does_not_run() -> None:
    q, k, v, meta = _case([3], [40], (4, 2, 64), 16, seed=3)
    meta.with_trees([[-1, 0, 0]])
    assert meta.tree_parents is not None
    with pytest.raises(ValueError, match="two-pass"):
        cpu_attention.paged_attention(q, k, v, meta, 0.125, parents=meta.tree_parents, tiled_min_rows=10**9)
    with pytest.raises(ValueError, match="two-pass"):
        cpu_attention.paged_attention(q, k, v, meta, 0.125, parents=meta.tree_parents, window=8)
