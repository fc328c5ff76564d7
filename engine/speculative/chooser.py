"""Which drafter speculates for a request this step, and how many of its tokens: pure policy.

Every drafter offers a `Proposal`: draft tokens with `path_probs[i]`, its own estimate that drafts
0..i are all accepted (the suffix tree's frequency shares times its match confidence, a prompt-lookup
match's confidence per token, a fixed prior for the MTP module and the draft model). The request's
acceptance history calibrates each drafter's estimates: `DrafterStats` keeps moving sums of what a
drafter predicted (the sum of the path probabilities of the tokens it drafted) and of what was then
accepted, and scales its estimates by their ratio. Drafting the first k tokens is then expected to
emit 1 + sum_{i<k} min(1, c * p_i) tokens for one verify step that costs
1 + overhead + k * (per_token + the drafter's own cost per token) plain decode steps (`VerifyCost`).
The chooser takes the (drafter, k) with the most expected tokens per unit of cost, or no
speculation when none beats a plain step (1 token per 1 cost): a verify step is never spent on a
draft unlikely to pay for itself, a long confident match is drafted far, and the drafter whose
drafts this request accepts most wins. Verification stays lossless whatever is chosen; the choice
changes only speed.

When a drafter's calibration falls so low that it is never chosen, its history would never change;
every step it offers a draft but is passed over, its sums decay toward the prior
(`DrafterStats.skip`), so a drafter that starts matching again is retried.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class VerifyCost:
    """The cost of a verify step in plain decode steps: 1 + overhead + per_token * (number of
    drafts). Raises ValueError on negative values."""

    overhead: float = 0.15
    per_token: float = 0.06

    def __post_init__(self) -> None:
        if self.overhead < 0 or self.per_token < 0:
            raise ValueError(f"verify costs must be >= 0, got overhead {self.overhead}, per_token {self.per_token}")

    def of(self, k: int, drafter_per_token: float = 0.0) -> float:
        return 1.0 + self.overhead + k * (self.per_token + drafter_per_token)


@dataclass(frozen=True, slots=True)
class Proposal:
    """Up to len(tokens) draft tokens from `drafter`; `path_probs` (same length, non-increasing)
    estimate that the draft's first i + 1 tokens are all accepted; `cost_per_token`: the drafter's
    own cost per drafted token in plain decode steps (0 for table lookups)."""

    drafter: str
    tokens: list[int]
    path_probs: list[float]
    cost_per_token: float = 0.0


@dataclass(slots=True)
class DrafterStats:
    """A request's moving record of one drafter: predicted and accepted token sums with decay
    `decay` per verify step (a memory of ~10 verify steps), starting from `prior` of each
    (calibration 1). A step the drafter is passed over decays them by `skip_decay`: slower, so a
    drafter that keeps failing is retried now and then (every few dozen steps), not every other step."""

    prior: float = 2.0
    decay: float = 0.9
    skip_decay: float = 0.97
    predicted: float = 0.0
    accepted: float = 0.0

    @property
    def calibration(self) -> float:
        """Accepted over predicted tokens: how far this drafter's estimates hold for this request."""
        return (self.accepted + self.prior) / (self.predicted + self.prior)

    def record(self, predicted: float, accepted: int) -> None:
        self.predicted = self.decay * self.predicted + predicted
        self.accepted = self.decay * self.accepted + accepted

    def skip(self) -> None:
        """Passed over this step: drift back toward the prior."""
        self.predicted *= self.skip_decay
        self.accepted *= self.skip_decay


@dataclass(frozen=True, slots=True)
class Choice:
    """The chosen drafter, how many of its tokens to verify, and the (uncalibrated) number of
    them its path probabilities predict to be accepted."""

    drafter: str
    tokens: list[int]
    predicted: float
    gain: float  # expected tokens per unit of cost (a plain step: 1.0)


def best_length(proposal: Proposal, calibration: float, cost: VerifyCost) -> tuple[int, float]:
    """(k, expected tokens per unit of cost) for the k >= 1 that maximises it; (0, 1.0) when no
    k beats a plain step."""
    best_k, best_gain, expected = 0, 1.0, 1.0
    for i, p in enumerate(proposal.path_probs, start=1):
        expected += min(1.0, calibration * p)
        gain = expected / cost.of(i, proposal.cost_per_token)
        if gain > best_gain:
            best_k, best_gain = i, gain
    return best_k, best_gain


def choose(proposals: list[Proposal], stats: dict[str, DrafterStats], cost: VerifyCost) -> Choice | None:
    """The proposal and length with the most expected tokens per unit of cost, or None (a plain
    step). Drafters that offered tokens but lost have their stats decay (`DrafterStats.skip`);
    `stats` gets an entry for every drafter seen."""
    best: Choice | None = None
    for prop in proposals:
        if not prop.tokens:
            continue
        st = stats.setdefault(prop.drafter, DrafterStats())
        k, gain = best_length(prop, st.calibration, cost)
        if k and (best is None or gain > best.gain):
            best = Choice(prop.drafter, prop.tokens[:k], sum(prop.path_probs[:k]), gain)
    for prop in proposals:
        if prop.tokens and (best is None or prop.drafter != best.drafter):
            stats[prop.drafter].skip()
    return best


@dataclass(slots=True)
class SpecState:
    """A request's speculation record: per-drafter stats and what the current draft came from."""

    stats: dict[str, DrafterStats] = field(default_factory=dict)
    drafter: str | None = None  # the drafter of `Sequence.draft_ids`, None when there is no draft
    predicted: float = 0.0

    def record(self, accepted: int) -> None:
        """The verify step of the current draft accepted `accepted` tokens."""
        if self.drafter is not None:
            self.stats.setdefault(self.drafter, DrafterStats()).record(self.predicted, accepted)
        self.drafter, self.predicted = None, 0.0
