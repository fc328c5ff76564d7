"""SuffixTree against a brute-force model of the same definition (distinct live windows)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.speculative.suffix import SuffixDrafter, SuffixTree


def _windows(docs: dict[int, list[int]], depth: int) -> set[tuple[int, ...]]:
    return {tuple(toks[i : i + depth]) for toks in docs.values() for i in range(len(toks))}


def _paths(tree: SuffixTree, node: int = SuffixTree.root, prefix: tuple[int, ...] = ()) -> dict[tuple[int, ...], int]:
    out = {}
    for tok, child in tree.children(node).items():
        path = (*prefix, tok)
        out[path] = tree.count(child)
        out.update(_paths(tree, child, path))
    return out


def _expected(windows: set[tuple[int, ...]]) -> dict[tuple[int, ...], int]:
    counts: dict[tuple[int, ...], int] = {}
    for w in windows:
        for j in range(1, len(w) + 1):
            counts[w[:j]] = counts.get(w[:j], 0) + 1
    return counts


ops = st.lists(
    st.tuples(st.sampled_from(["add", "extend", "remove"]), st.integers(0, 3), st.lists(st.integers(0, 3), max_size=12)),
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_counts_equal_the_distinct_windows_of_live_documents(script: list[tuple[str, int, list[int]]]) -> None:
    tree, live, depth = SuffixTree(max_depth=4, max_nodes=10**6), {}, 4
    for op, doc, toks in script:
        if op == "add":
            tree.add(doc, toks)
            live[doc] = list(toks)
        elif op == "extend":
            full = live.get(doc, []) + toks
            tree.add(doc, full)
            live[doc] = full
        else:
            tree.remove(doc)
            live.pop(doc, None)
        expected = _expected(_windows(live, depth))
        assert _paths(tree) == expected
        assert tree.num_nodes == len(expected)
    for doc in list(live):
        tree.remove(doc)
    assert tree.children(tree.root) == {} and tree.num_nodes == 0 and tree._refs == {}


def test_proposes_the_most_frequent_continuation_of_the_longest_match() -> None:
    tree = SuffixTree(max_depth=8)
    tree.add("a", [1, 2, 3, 4, 5, 6])
    tree.add("b", [9, 2, 3, 7, 8])
    tree.add("c", [8, 2, 3, 7, 8, 1])
    # "2 3" is followed by 4 once and by 7 twice; "1 2 3" only by 4.
    assert tree.propose([0, 2, 3], k=3) == (2, [7, 8, 1])
    assert tree.propose([1, 2, 3], k=3) == (3, [4, 5, 6])
    assert tree.propose([5, 5, 42], k=3) == (0, [])
    assert tree.propose([1, 2, 3], k=1) == (3, [4])


def test_min_prob_stops_at_uncertain_branches() -> None:
    tree = SuffixTree(max_depth=6)
    for doc, nxt in enumerate([10, 11, 12, 13, 14]):
        tree.add(doc, [1, 2, nxt])
    length, draft = tree.propose([1, 2], k=4, min_prob=0.5)
    assert length == 2 and draft == []
    assert len(tree.propose([1, 2], k=4, min_prob=0.1)[1]) == 1


def test_short_matches_draft_fewer_tokens() -> None:
    """With a match prior, each token's chance is share * L / (L + prior): the draft ends where the
    product falls below min_path_prob, so a 1-token match drafts less than a 7-token one."""
    tree = SuffixTree(max_depth=32)
    tree.add(0, list(range(30)))
    # L = 1: confidence 1/2 per token -> 0.5, 0.25 pass 0.2; 0.125 does not.
    assert tree.propose([99, 5], k=10, min_path_prob=0.2, match_prior=1.0) == (1, [6, 7])
    # L = 7: 7/8 per token -> (7/8)^12 = 0.201 passes, (7/8)^13 = 0.176 does not.
    length, draft = tree.propose(list(range(7)), k=20, min_path_prob=0.2, match_prior=1.0)
    assert length == 7 and draft == list(range(7, 19))
    assert tree.propose([99, 5], k=10) == (1, list(range(6, 16)))  # no prior: shares alone (all 1 here)


def test_drafter_cuts_prompt_lookup_drafts_by_match_length() -> None:
    drafter = SuffixDrafter(min_path_prob=0.15, match_prior=1.0)
    context = [50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 50, 51]  # own context: "50 51" matched (n = 2)
    assert drafter.propose(context, k=10) == [52, 53, 54, 55]  # (2/3)^4 = 0.198 >= 0.15 > (2/3)^5
    assert SuffixDrafter(min_path_prob=0.0).propose(context, k=10) == context[2:12]


def test_a_draft_never_runs_past_the_stored_depth() -> None:
    tree = SuffixTree(max_depth=5)
    tree.add(0, list(range(20)))
    length, draft = tree.propose([2, 3, 4], k=10)
    assert length == 3 and draft == [5, 6]  # 3 matched + 2 drafted = max_depth


def test_node_budget_evicts_oldest_documents_first() -> None:
    tree = SuffixTree(max_depth=4, max_nodes=40)
    for doc in range(10):
        tree.add(doc, [doc * 10 + j for j in range(6)])  # disjoint documents of 15 nodes each
    assert tree.num_nodes <= 40
    assert tree.propose([91, 92], k=2)[1] == [93, 94]  # newest kept
    assert tree.propose([1, 2], k=2) == (0, [])  # oldest gone
    assert len(tree) < 10


def test_a_window_shared_by_two_documents_survives_removing_one() -> None:
    tree = SuffixTree(max_depth=4)
    tree.add("x", [1, 2, 3, 4])
    tree.add("y", [1, 2, 3, 4])
    tree.remove("x")
    assert tree.propose([1, 2], k=2)[1] == [3, 4]
    tree.remove("y")
    assert tree.num_nodes == 0


def test_bad_sizes_are_rejected() -> None:
    with pytest.raises(ValueError, match="max_depth"):
        SuffixTree(max_depth=1)


def test_window_hashes_depend_only_on_the_window() -> None:
    import numpy as np

    from engine.speculative.suffix import window_hashes

    a = np.array([5, 6, 7, 8, 9, 6, 7, 8], dtype=np.int64)
    ha = window_hashes(a, 0, 3, seed=7)
    assert len(ha) == 8
    assert ha[1] == ha[5]  # "6 7 8" at two offsets
    assert ha[1] == window_hashes(np.array([1, 6, 7, 8, 2], dtype=np.int64), 1, 3, seed=7)[0]
    assert len(set(ha[:5])) == 5 and ha[6] != ha[1]  # "7 8" (a short tail window) differs from "6 7 8"
    assert window_hashes(a, 0, 3, seed=8)[1] != ha[1]  # keyed
    assert window_hashes(a, 8, 3, seed=7) == []


def test_only_finished_outputs_enter_the_global_tree_with_their_prompt_tail() -> None:
    drafter = SuffixDrafter(min_path_prob=0.0, prompt_context=2)
    prompt, output = list(range(100, 140)), [7, 8, 9, 10, 11, 12]
    drafter.observe("a", prompt)  # admitted: nothing indexed yet
    assert drafter.propose([1, 2, 120, 121], k=4) == [] and len(drafter.tree) == 0
    drafter.observe("a", prompt + output)  # finished: the output and the prompt's last 2 tokens
    assert drafter.propose([5, 138, 139], k=4) == [7, 8, 9, 10]
    assert drafter.propose([5, 120, 121], k=4) == []  # earlier prompt tokens were never indexed
    drafter.observe("b", [1, 2, 3])  # admitted, then finished with no output: nothing indexed
    drafter.observe("b", [1, 2, 3])
    assert len(drafter.tree) == 1


def test_preloaded_outputs_draft_like_served_ones_and_are_evicted_first() -> None:
    drafter = SuffixDrafter(min_path_prob=0.0, max_depth=8, max_nodes=40)
    assert drafter.preload([[5, 6, 7, 8, 9], [1], [30, 31, 32, 33]]) == 2  # a one-token document has no continuation
    assert drafter.propose([0, 5, 6], k=3) == [7, 8, 9]
    assert drafter.propose([0, 30], k=2) == [31, 32]
    drafter.observe("r", [50])
    drafter.observe("r", [50, *range(60, 75)])  # a served request's output: the budget evicts the preloads first
    assert drafter.propose([0, 5, 6], k=3) == []
    assert drafter.propose([60, 61], k=2) == [62, 63]


def test_preloading_needs_the_suffix_drafter() -> None:
    from engine.speculative.chooser import VerifyCost
    from engine.speculative.speculator import Speculator

    assert Speculator(("suffix",), VerifyCost()).preload([[1, 2, 3]]) == 1
    with pytest.raises(ValueError, match="suffix drafter"):
        Speculator(("ngram",), VerifyCost()).preload([[1, 2, 3]])
