"""Speculative tree verification: the tree choice, the greedy walk, KV compaction, lossless engine
output, and the explicit fallback to chain drafts where token-tree attention does not run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine import LLM, SamplingParams
from engine.kernels.cpu import attention as cpu_attention
from engine.model.attention import KVCache
from engine.runner import compact_kv
from engine.speculative.chooser import VerifyCost, accept_tree_greedy, choose_tree

GREEDY = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
OPTS = dict(device="cpu", dtype="float32", block_size=4, num_kv_blocks=512)


def test_accept_tree_greedy_walks_the_argmax_branch() -> None:
    # root -> 5 (node 0) -> 6 (node 1); root -> 7 (node 2) -> 8 (node 3) -> 9 (node 4); 7 -> 3 (node 5)
    parents, tokens = [-1, 0, -1, 2, 3, 2], [5, 6, 7, 8, 9, 3]
    # argmax after the last token: 7; after node 2 (7): 3; after node 5 (3): 4 (no such child)
    argmax = [7, 0, 0, 3, 0, 0, 4]
    assert accept_tree_greedy(parents, tokens, argmax) == ([2, 5], 4)
    assert accept_tree_greedy(parents, tokens, [1, 0, 0, 0, 0, 0, 0]) == ([], 1)  # no first token matches
    assert accept_tree_greedy(parents, tokens, [7, 0, 0, 8, 9, 2, 0]) == ([2, 3, 4], 2)  # a whole branch, then the bonus


def test_choose_tree_takes_branches_by_expected_tokens_per_cost() -> None:
    cost = VerifyCost(0.15, 0.06).of
    cands = {(1,): 0.9, (1, 2): 0.8, (1, 2, 3): 0.7, (4,): 0.3, (1, 5): 0.05, (6, 7): 0.6}  # (6, 7) has no parent
    tree = choose_tree(cands, cost, max_nodes=31)
    assert tree is not None
    assert tree.tokens == [1, 2, 3, 4] and tree.parents == [-1, 0, 1, -1]  # parents first; (1, 5) does not pay
    assert tree.expected == pytest.approx(1 + 0.9 + 0.8 + 0.7 + 0.3)
    assert choose_tree(cands, cost, max_nodes=2) == choose_tree({(1,): 0.9, (1, 2): 0.8}, cost, 31)
    assert choose_tree({(1,): 0.05}, cost, 31) is None  # never beats a plain step


def test_compact_kv_moves_the_accepted_path_after_the_context() -> None:
    kv = KVCache.allocate(2, 6, 4, 1, 8, torch.float32, "cpu")
    kv.k.copy_(torch.randn_like(kv.k))
    kv.v.copy_(torch.randn_like(kv.v))
    table = [3, 0, 5]  # positions 0-3 in block 3, 4-7 in block 0, 8-11 in block 5
    k0, v0 = kv.k.clone(), kv.v.clone()

    def at(cache: torch.Tensor, pos: int) -> torch.Tensor:
        return cache[:, table[pos // 4], pos % 4]

    compact_kv(kv, table, [(5, 5), (7, 6), (9, 7)])  # the path: nodes at 5, 7, 9 -> 5, 6, 7
    for src, dst in [(5, 5), (7, 6), (9, 7)]:
        assert torch.equal(at(kv.k, dst), at(k0, src)) and torch.equal(at(kv.v, dst), at(v0, src))
    for pos in (0, 1, 2, 3, 4, 8):
        assert torch.equal(at(kv.k, pos), at(k0, pos))


def _prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(7)
    motif = torch.randint(2, 128, (6,), generator=g).tolist()
    return [motif * 3 + [9, 9], torch.randint(2, 128, (20,), generator=g).tolist(), (motif + [5]) * 3]


def _branchy_documents(prompts: list[list[int]], outputs: list[list[int]]) -> list[list[int]]:
    """Earlier "outputs" that branch off the true ones: each true output, and copies with one token
    changed every 5 tokens (the global tree then offers a right and a wrong child at those places)."""
    docs = []
    for prompt, out in zip(prompts, outputs, strict=True):
        doc = prompt[-4:] + out
        docs.append(doc)
        for shift in (1, 3):
            docs.append([t if i % 5 != shift else (t + 1) % 128 for i, t in enumerate(doc)])
    return docs


needs_trees = pytest.mark.skipif(not (cpu_attention.available() and cpu_attention.tree_supported(16)),
                                 reason="token-tree attention runs on the AVX2 two-pass C path only")


@needs_trees
def test_greedy_output_with_tree_verification_equals_plain_decoding(tiny_qwen: Path) -> None:
    prompts = _prompts()
    plain_llm = LLM(tiny_qwen, **OPTS)  # type: ignore[arg-type]
    plain = [o.token_ids for o in plain_llm.generate(prompts, GREEDY)]
    llm = LLM(tiny_qwen, speculative="suffix", num_speculative_tokens=8, spec_tree=True, **OPTS)  # type: ignore[arg-type]
    assert llm.core.runner.tree_verification
    llm.preload_drafts(_branchy_documents(prompts, plain))
    trees: list[list[int]] = []
    draft_tree = llm.core.speculator.draft_tree

    def spy(seq, k, max_nodes):  # type: ignore[no-untyped-def]
        draft_tree(seq, k, max_nodes)
        if seq.draft_parents is not None:
            trees.append(list(seq.draft_parents))

    llm.core.speculator.draft_tree = spy  # type: ignore[method-assign]
    for prompt, want in zip(prompts, plain, strict=True):  # one at a time, and then all together
        assert llm.generate([prompt], GREEDY)[0].token_ids == want
    out = llm.generate(prompts, GREEDY)
    assert [o.token_ids for o in out] == plain
    assert any(len(set(p)) < len(p) for p in trees)  # some trees branched (two nodes with one parent)
    assert sum(o.usage.spec_accepted_tokens for o in out) > 0
    # the cache after tree steps holds what plain decoding wrote (compaction moved the accepted nodes)
    tokens = prompts[0] + plain[0]
    ma = plain_llm.core.scheduler.radix.match_prefix(tokens, count=False)  # type: ignore[union-attr]
    mb = llm.core.scheduler.radix.match_prefix(tokens, count=False)  # type: ignore[union-attr]
    n = min(ma.num_tokens, mb.num_tokens)
    assert n >= len(prompts[0])
    nb = n // OPTS["block_size"]  # type: ignore[operator]
    assert torch.equal(plain_llm.core.runner.kv_cache.k[:, ma.block_ids[:nb]], llm.core.runner.kv_cache.k[:, mb.block_ids[:nb]])
    assert torch.equal(plain_llm.core.runner.kv_cache.v[:, ma.block_ids[:nb]], llm.core.runner.kv_cache.v[:, mb.block_ids[:nb]])


def test_engines_without_token_tree_attention_draft_chains(tiny_qwen: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the kernel takes no trees (AVX-512 tiled path, CUDA, bf16, ...), spec_tree falls back to
    chain drafts, explicitly, with the same output."""
    monkeypatch.setattr(cpu_attention, "tree_supported", lambda head_dim: False)
    prompts = _prompts()
    plain = [o.token_ids for o in LLM(tiny_qwen, **OPTS).generate(prompts, GREEDY)]  # type: ignore[arg-type]
    llm = LLM(tiny_qwen, speculative="suffix", num_speculative_tokens=8, spec_tree=True, **OPTS)  # type: ignore[arg-type]
    assert not llm.core.runner.tree_verification
    llm.preload_drafts(_branchy_documents(prompts, plain))
    calls: list[int] = []
    monkeypatch.setattr(llm.core.speculator, "draft_tree", lambda *a: calls.append(1))
    out = llm.generate(prompts, GREEDY)
    assert [o.token_ids for o in out] == plain and not calls
    assert sum(o.usage.spec_accepted_tokens for o in out) > 0  # chains were drafted and verified


def test_sampled_requests_and_other_drafters_draft_chains(tiny_qwen: Path) -> None:
    llm = LLM(tiny_qwen, speculative="suffix,ngram", num_speculative_tokens=8, spec_tree=True, **OPTS)  # type: ignore[arg-type]
    spec = llm.core.speculator
    from engine.sequence import Sequence

    seq = Sequence([1, 2, 3], SamplingParams(temperature=0.0, speculative="suffix"))
    assert spec.tree_ok(seq)
    assert not spec.tree_ok(Sequence([1, 2, 3], SamplingParams(temperature=0.7, speculative="suffix")))
    assert not spec.tree_ok(Sequence([1, 2, 3], SamplingParams(temperature=0.0)))  # suffix and ngram: the chooser's pick


def test_suffix_branches_are_every_child_best_first() -> None:
    from engine.speculative.suffix import SuffixTree

    trie = SuffixTree(max_depth=8)
    for i, doc in enumerate([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 6, 7]]):
        trie.add(i, doc)
    got = trie.branches([9, 1, 2], k=2, budget=10, match_prior=0.0)  # after "1 2": 3 (2 of 3), 6 (1 of 3)
    assert got == pytest.approx({(3,): 2 / 3, (3, 4): 1 / 3, (3, 5): 1 / 3, (6,): 1 / 3, (6, 7): 1 / 3})
    assert next(iter(got)) == (3,)
    assert trie.branches([9, 1, 2], k=2, budget=3) == pytest.approx({(3,): 2 / 3, (3, 4): 1 / 3, (3, 5): 1 / 3})
    assert trie.branches([9, 1, 2], k=2, budget=10, min_prob=0.5) == pytest.approx({(3,): 2 / 3})


def test_draft_tree_calibrates_by_the_requests_tree_history() -> None:
    from engine.sequence import Sequence
    from engine.speculative.speculator import TREE_SOURCE, Speculator

    spec = Speculator(("suffix",), VerifyCost(0.15, 0.06))
    spec.preload([[1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 9, 9, 9, 9, 9]])
    seq = Sequence([7, 1, 2, 3], SamplingParams(temperature=0.0))
    spec.draft_tree(seq, 4, 31)
    assert seq.draft_ids and seq.draft_parents is not None and seq.spec is not None
    assert sorted(seq.draft_ids[:2]) == [4, 9] and seq.draft_parents[:2] == [-1, -1]  # both branches
    assert seq.spec.drafter == TREE_SOURCE and seq.spec.predicted > 0
    big = len(seq.draft_ids)
    for _ in range(30):  # nothing this request drafted was ever accepted: its trees shrink to none
        Speculator.record(seq, 0)
        spec.draft_tree(seq, 4, 31)
        assert len(seq.draft_ids) <= big
    assert seq.draft_ids == [] and seq.draft_parents is None
