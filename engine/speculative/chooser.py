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

from collections.abc import Callable
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


@dataclass(frozen=True, slots=True)
class TreeDraft:
    """A draft tree: node i is `tokens[i]` with parent `parents[i]` (an earlier node, or -1: the
    request's last token); `expected`: the expected tokens one verify step of it emits."""

    tokens: list[int]
    parents: list[int]
    expected: float
    paths: list[tuple[int, ...]]  # each node's tokens from the root


def choose_tree(candidates: dict[tuple[int, ...], float], cost: Callable[[int], float], max_nodes: int) -> TreeDraft | None:
    """The draft tree with the most expected tokens per unit of cost among the best-first prefixes of
    `candidates` ({path: estimated chance the output follows it}; a path is taken only after its
    parent): expected tokens 1 + the sum of the taken paths' chances, cost `cost(number of nodes)`
    in plain steps. None when no tree beats a plain step. Nodes come parents first."""
    chosen: list[tuple[int, ...]] = []
    index: dict[tuple[int, ...], int] = {}
    best, best_n, expected, best_expected = 1.0, 0, 1.0, 1.0
    for path, p in sorted(candidates.items(), key=lambda kv: -kv[1]):
        if len(chosen) == max_nodes:
            break
        if len(path) > 1 and path[:-1] not in index:
            continue
        index[path] = len(chosen)
        chosen.append(path)
        expected += p
        gain = expected / cost(len(chosen))
        if gain > best:
            best, best_n, best_expected = gain, len(chosen), expected
    if not best_n:
        return None
    nodes = chosen[:best_n]
    return TreeDraft([p[-1] for p in nodes], [index[p[:-1]] if len(p) > 1 else -1 for p in nodes], best_expected, nodes)


def accept_tree_greedy(parents: list[int], tokens: list[int], argmax: list[int]) -> tuple[list[int], int]:
    """Temperature 0 over a draft tree: `argmax[0]` is the target's token after the last token and
    `argmax[i + 1]` after node i. From the root, follow the child whose token is the argmax of its
    parent; returns (the accepted nodes in order, the token after the last of them)."""
    kids = {(parent, tok): i for i, (parent, tok) in enumerate(zip(parents, tokens, strict=True))}
    path: list[int] = []
    node = -1
    while (nxt := kids.get((node, argmax[node + 1]))) is not None:
        path.append(nxt)
        node = nxt
    return path, argmax[node + 1]
