"""Rejection sampling is lossless: emitted tokens follow the target distribution exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.speculative.ngram import NgramDrafter
from engine.speculative.rejection import accept, accept_greedy

VOCAB = 20


def chi2_sf(chi2: float, dof: int) -> float:
    """Chi-square survival function (regularised upper incomplete gamma)."""
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), torch.tensor(chi2 / 2, dtype=torch.float64)))


def _dist(g: torch.Generator, n: int) -> torch.Tensor:
    return torch.softmax(torch.randn(n, VOCAB, generator=g) * 1.5, dim=-1)


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("random_drafter", [False, True])
def test_first_emitted_token_follows_the_target_distribution(k: int, random_drafter: bool) -> None:
    g = torch.Generator().manual_seed(k)
    n = 100_000
    p = _dist(g, k + 1)  # one target distribution per position (same for every sample)
    q = _dist(g, k)
    target = p.expand(n, k + 1, VOCAB)
    if random_drafter:  # drafts sampled from q
        drafts = torch.multinomial(q, n, replacement=True, generator=g).T  # [n, k]
        accepted, nxt = accept(target, drafts, q.expand(n, k, VOCAB), generator=g)
    else:  # a deterministic drafter always proposing the same tokens (q one-hot)
        drafts = torch.multinomial(q, 1, generator=g).T.expand(n, k)
        accepted, nxt = accept(target, drafts, None, generator=g)
    first = torch.where(accepted > 0, drafts[:, 0], nxt)  # the first token the engine emits
    observed = torch.bincount(first, minlength=VOCAB).numpy()
    expected = p[0].double().numpy() * n
    keep = expected > 5
    chi2 = ((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum()
    assert chi2_sf(chi2, int(keep.sum()) - 1) > 1e-3, chi2


def test_second_token_is_conditionally_correct_given_the_first() -> None:
    g = torch.Generator().manual_seed(7)
    n, k = 100_000, 2
    p = _dist(g, k + 1)
    drafts = torch.tensor([[3, 5]]).expand(n, k)
    accepted, nxt = accept(p.expand(n, k + 1, VOCAB), drafts, None, generator=g)
    # Given the first emitted token was draft 3 (accepted), the second must follow p[1].
    cond = accepted >= 1
    second = torch.where(accepted >= 2, drafts[:, 1], nxt)[cond]
    observed = torch.bincount(second, minlength=VOCAB).numpy()
    expected = p[1].double().numpy() * int(cond.sum())
    keep = expected > 5
    chi2 = ((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum()
    assert chi2_sf(chi2, int(keep.sum()) - 1) > 1e-3


def test_tokens_outside_a_top_k_support_are_never_emitted() -> None:
    g = torch.Generator().manual_seed(1)
    p = _dist(g, 3)
    p[:, 10:] = 0  # a top-k / top-p restricted target
    p = p / p.sum(-1, keepdim=True)
    drafts = torch.tensor([[15, 2]]).expand(20_000, 2)  # the first draft lies outside the support
    accepted, nxt = accept(p.expand(20_000, 3, VOCAB), drafts, None, generator=g)
    assert int(accepted.max()) == 0 and int(nxt.max()) < 10


def test_greedy_acceptance_takes_exactly_the_argmax_prefix() -> None:
    argmax = torch.tensor([[4, 5, 6, 7], [4, 5, 6, 7], [1, 2, 3, 4]])
    drafts = torch.tensor([[4, 5, 6], [4, 9, 6], [-1, -1, -1]])
    accepted, nxt = accept_greedy(argmax, drafts)
    assert accepted.tolist() == [3, 1, 0] and nxt.tolist() == [7, 5, 1]


def test_ngram_drafter_copies_what_followed_the_last_occurrence() -> None:
    d = NgramDrafter(max_n=3, min_n=1)
    seq = [1, 2, 3, 4, 5, 9, 1, 2, 3]
    assert d.propose(seq, 3) == [4, 5, 9]
    assert d.propose([7, 8], 3) == []
    assert np.array_equal(d.propose([5, 6, 5], 2), [6, 5])


def test_chunked_greedy_verification_equals_accept_greedy_on_full_logits() -> None:
    from engine.runner import verify_greedy
    from engine.speculative.rejection import accept_greedy

    g = torch.Generator().manual_seed(0)
    head = torch.randn(12, 6, generator=g)  # a tiny vocabulary makes matches common
    for trial in range(300):
        k = 1 + trial % 11
        hidden = torch.randn(k + 1, 12, generator=g)
        argmax = (hidden @ head).argmax(-1)
        drafts = [int(t) if torch.rand((), generator=g) < 0.7 else int(torch.randint(6, (), generator=g)) for t in argmax[:k]]
        num, nxt = accept_greedy(argmax[None], torch.tensor([drafts]))
        assert verify_greedy(lambda h: h @ head, hidden, drafts) == (int(num[0]), int(nxt[0]))


def _ngram_reference(tokens: list[int], k: int, max_n: int, min_n: int) -> tuple[int, list[int]]:
    """The definition: for n = max_n down to min_n, the latest earlier occurrence of the last n tokens."""
    for n in range(max_n, min_n - 1, -1):
        if len(tokens) <= n:
            continue
        pattern = tokens[-n:]
        for start in range(len(tokens) - n - 1, -1, -1):
            if tokens[start : start + n] == pattern:
                return n, tokens[start + n : start + n + k]
    return 0, []


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 3), max_size=40), st.integers(1, 5), st.integers(1, 4), st.integers(0, 3))
def test_ngram_drafter_equals_its_definition(tokens: list[int], k: int, max_n: int, shrink: int) -> None:
    min_n = max(1, max_n - shrink)
    assert NgramDrafter(max_n=max_n, min_n=min_n).propose_with_length(tokens, k) == _ngram_reference(tokens, k, max_n, min_n)
