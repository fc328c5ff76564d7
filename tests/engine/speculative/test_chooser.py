"""The drafter chooser: draft length by expected tokens per verify cost, calibrated per request;
per-step choice among drafters that follows their acceptance."""

from __future__ import annotations

import pytest

from engine.sequence import SamplingParams, Sequence
from engine.speculative.chooser import DrafterStats, Proposal, SpecState, VerifyCost, best_length, choose
from engine.speculative.speculator import PROMPT_SOURCE, Speculator

COST = VerifyCost(overhead=0.15, per_token=0.06)


def test_unlikely_drafts_are_not_verified() -> None:
    weak = Proposal("suffix", [5, 6, 7], [0.1, 0.02, 0.004])
    assert best_length(weak, 1.0, COST) == (0, 1.0)
    assert choose([weak], {}, COST) is None


def test_a_confident_match_is_drafted_in_full_and_a_fading_one_is_cut() -> None:
    sure = Proposal("suffix", list(range(16)), [0.99**i for i in range(1, 17)])
    assert best_length(sure, 1.0, COST)[0] == 16
    fading = Proposal("suffix", list(range(8)), [0.9, 0.8, 0.6, 0.3, 0.1, 0.05, 0.02, 0.01])
    k, gain = best_length(fading, 1.0, COST)
    assert 2 <= k <= 4 and gain > 1.0


def test_a_history_of_rejections_shortens_the_drafts_then_only_probes_now_and_then() -> None:
    prop = Proposal("suffix", list(range(8)), [0.8**i for i in range(1, 9)])
    stats = DrafterStats()
    lengths = []
    for _ in range(40):
        choice = choose([prop], {"suffix": stats}, COST)
        lengths.append(0 if choice is None else len(choice.tokens))
        if choice is not None:
            stats.record(choice.predicted, 0)
    stop = lengths.index(0)
    assert lengths[0] == 8 and stop <= 8
    assert all(a >= b for a, b in zip(lengths[: stop - 1], lengths[1:stop], strict=True)) and lengths[stop - 1] < 8  # shrinking
    assert sum(1 for n in lengths[stop:] if n) <= len(lengths[stop:]) // 3  # afterwards mostly plain steps


def test_a_drafter_passed_over_drifts_back_toward_its_prior() -> None:
    stats = DrafterStats(predicted=10.0, accepted=0.0)
    low = stats.calibration
    for _ in range(60):
        stats.skip()
    assert low < 0.3 < stats.calibration <= 1.0


def test_the_chooser_switches_to_the_drafter_whose_drafts_are_accepted() -> None:
    """Equal-looking proposals; drafter "a" keeps being rejected, "b" accepted: the choice moves to "b"."""
    stats: dict[str, DrafterStats] = {}
    a, b = Proposal("a", [1, 2, 3, 4], [0.9, 0.8, 0.7, 0.6]), Proposal("b", [1, 2, 3, 4], [0.85, 0.75, 0.65, 0.55])
    picked = []
    for _ in range(6):
        choice = choose([a, b], stats, COST)
        assert choice is not None
        picked.append(choice.drafter)
        stats[choice.drafter].record(choice.predicted, 0 if choice.drafter == "a" else len(choice.tokens))
    assert picked[0] == "a" and picked[-3:] == ["b", "b", "b"]


def test_the_speculator_prefers_mtp_when_prompt_lookup_keeps_failing() -> None:
    """A crafted request: its context repeats (prompt lookup drafts), the MTP module offers a guess.
    Prompt lookup is rejected every step and MTP accepted: the speculator moves to MTP."""
    spec = Speculator(("suffix", "mtp"), COST)
    seq = Sequence([3, 4, 5, 6, 7, 8, 9, 10, 3, 4, 5, 6, 7, 8, 9, 10, 3, 4, 5, 6], SamplingParams(temperature=0.0))
    chosen = []
    for _ in range(8):
        seq.mtp_draft = 42
        spec.draft(seq, 8)
        assert seq.spec is not None
        chosen.append(seq.spec.drafter)
        spec.record(seq, 1 if seq.spec.drafter == "mtp" else 0)
        seq.draft_ids = []
    assert chosen[0] == PROMPT_SOURCE and chosen[-1] == "mtp"
    assert seq.usage.spec_proposed_tokens > seq.usage.spec_accepted_tokens > 0


def test_a_request_naming_a_drafter_gets_only_that_drafter() -> None:
    spec = Speculator(("suffix", "mtp"), COST)
    seq = Sequence([3, 4, 5, 3, 4, 5, 3, 4], SamplingParams(temperature=0.0, speculative="mtp"))
    seq.mtp_draft = 42
    spec.draft(seq, 8)
    assert seq.draft_ids == [42] and isinstance(seq.spec, SpecState) and seq.spec.drafter == "mtp"


def test_negative_costs_are_rejected() -> None:
    with pytest.raises(ValueError, match="overhead"):
        VerifyCost(overhead=-0.1)


def test_the_engine_config_rejects_negative_verify_costs() -> None:
    from engine.config import EngineConfig

    with pytest.raises(ValueError, match="spec_token_cost"):
        EngineConfig(spec_token_cost=-0.1)
