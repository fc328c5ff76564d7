"""Token sampling: the inverse-CDF draw follows its distribution and respects top-k/top-p supports."""

from __future__ import annotations

import torch

from engine.sampler import draw, sample
from engine.sequence import SamplingParams


def test_draw_follows_the_distribution_and_never_picks_zero_mass() -> None:
    g = torch.Generator().manual_seed(0)
    probs = torch.tensor([0.05, 0.0, 0.5, 0.25, 0.0, 0.2])
    n = 100_000
    counts = torch.bincount(torch.tensor([draw(probs, g) for _ in range(n)]), minlength=6).double()
    assert counts[1] == 0 and counts[4] == 0
    expected = probs.double() * n
    support = probs > 0
    chi2 = float(((counts[support] - expected[support]) ** 2 / expected[support]).sum())
    assert chi2 < 16.3  # chi-square, 3 degrees of freedom, p = 0.001


def test_draw_handles_unnormalised_mass_and_a_single_token() -> None:
    g = torch.Generator().manual_seed(1)
    assert {draw(torch.tensor([0.0, 0.0, 3.0]), g) for _ in range(50)} == {2}
    assert all(draw(torch.tensor([2.0, 6.0]), g) in (0, 1) for _ in range(50))


def test_seeded_rows_do_not_depend_on_the_batch_and_respect_top_k() -> None:
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(2))
    params = SamplingParams(temperature=1.0, top_k=3, seed=7)
    alone = sample(logits[1:2], [params], [torch.Generator().manual_seed(7)])
    batched = sample(logits, [SamplingParams(temperature=0.0), params, SamplingParams(temperature=0.9, top_p=0.5)],
                     [None, torch.Generator().manual_seed(7), None])
    assert batched[1] == alone[0]
    assert batched[0] == int(logits[0].argmax())
    top3 = set(torch.topk(logits[1], 3).indices.tolist())
    g = torch.Generator().manual_seed(3)
    assert all(sample(logits[1:2], [params], [g])[0] in top3 for _ in range(200))
