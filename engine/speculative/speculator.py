"""The engine's drafting step: gathers every allowed drafter's proposal for a request and lets the
chooser (chooser.py) pick the drafter and draft length per request and per step.

A request that names a drafter (`SamplingParams.speculative="suffix"`) gets only that drafter's
proposals, still cut to the length its acceptance history pays for; `speculative=True` lets the
chooser pick among all the engine's drafters every step. Token-level drafters (suffix tree,
prompt lookup) draft here; the MTP module's guess comes from the previous step (`Sequence.mtp_draft`)
and the draft model's tokens are filled in by the runner (placeholders reserve their slots).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from collections.abc import Sequence as Seq

from engine.sequence import Sequence
from engine.speculative.chooser import DrafterStats, Proposal, SpecState, VerifyCost, choose, choose_tree
from engine.speculative.draft_model import PLACEHOLDER
from engine.speculative.ngram import NgramDrafter
from engine.speculative.suffix import SuffixDrafter

PROMPT_SOURCE = "suffix:prompt"  # the suffix drafter's prompt lookup, tracked apart from its tree
TREE_SOURCE = "suffix:tree"  # the suffix drafter's draft trees (tree verification)
# Prior chance that one MTP / draft-model token is accepted before a request has a history; the
# request's calibration corrects them (the shipped MTP module: ~0.76 on eval turns).
MTP_PRIOR = 0.75
DRAFT_MODEL_PRIOR = 0.7
DRAFT_MODEL_COST = 0.3  # one draft-model forward per drafted token, in target decode steps (CPU)


class Speculator:
    """Drafts for the engine's sequences from `drafters` (names from engine.config.DRAFTERS)."""

    def __init__(self, drafters: Seq[str], cost: VerifyCost) -> None:
        self.drafters = tuple(drafters)
        self.cost = cost
        self.suffix: SuffixDrafter | None = SuffixDrafter() if "suffix" in self.drafters else None
        self.ngram: NgramDrafter | None = NgramDrafter() if "ngram" in self.drafters else None

    def observe(self, request_id: Hashable, token_ids: Seq[int]) -> None:
        """At admission (prompt) and at finish (prompt + output): feeds the global suffix tree."""
        if self.suffix is not None:
            self.suffix.observe(request_id, token_ids)

    def preload(self, documents: Iterable[Seq[int]]) -> int:
        """Seed the suffix drafter's global tree with earlier outputs (`SuffixDrafter.preload`);
        returns how many were indexed. Raises ValueError when the engine has no suffix drafter."""
        if self.suffix is None:
            raise ValueError(f"preloading drafts needs the suffix drafter; this engine drafts with {self.drafters or 'none'}")
        return self.suffix.preload(documents)

    def history(self) -> list[list[int]]:
        """The suffix drafter's global tree as documents, oldest first (`SuffixDrafter.history`).
        Raises ValueError when the engine has no suffix drafter."""
        if self.suffix is None:
            raise ValueError(f"draft history needs the suffix drafter; this engine drafts with {self.drafters or 'none'}")
        return self.suffix.history()

    def allowed(self, seq: Sequence) -> tuple[str, ...]:
        choice = seq.params.speculative
        if choice is False:
            return ()
        return self.drafters if choice is True else (str(choice),)

    def proposals(self, seq: Sequence, k: int) -> list[Proposal]:
        """Every allowed drafter's draft of up to `k` tokens (empty drafters left out)."""
        out = []
        for name in self.allowed(seq):
            if name == "mtp":
                if seq.mtp_draft is not None:
                    out.append(Proposal("mtp", [seq.mtp_draft], [MTP_PRIOR]))
            elif name == "draft":
                out.append(Proposal("draft", [PLACEHOLDER] * k, [DRAFT_MODEL_PRIOR ** (i + 1) for i in range(k)], DRAFT_MODEL_COST))
            elif name == "ngram":
                assert self.ngram is not None
                tokens, probs = self.ngram.propose_scored(seq.token_ids, k)
                out.append(Proposal("ngram", tokens, probs))
            else:
                out += self._suffix_proposals(seq.token_ids, k)
        return [p for p in out if p.tokens]

    def _suffix_proposals(self, token_ids: Seq[int], k: int) -> list[Proposal]:
        """The suffix drafter's two sources, each with its own acceptance history: the global
        tree of earlier outputs ("suffix") and prompt lookup in the request's context ("suffix:prompt")."""
        assert self.suffix is not None
        _, tree, tree_probs = self.suffix.tree_draft(token_ids, k)
        _, local, local_probs = self.suffix.prompt_draft(token_ids, k)
        return [Proposal("suffix", tree, tree_probs), Proposal(PROMPT_SOURCE, local, local_probs)]

    def draft(self, seq: Sequence, k: int) -> None:
        """Set `seq.draft_ids` to the chosen draft of at most `k` tokens (none: a plain step)."""
        state = seq.spec if seq.spec is not None else SpecState()
        seq.spec = state
        choice = choose(self.proposals(seq, k), state.stats, self.cost)
        seq.draft_parents = None
        if choice is None:
            seq.draft_ids = []
            state.drafter, state.predicted = None, 0.0
            return
        seq.draft_ids = choice.tokens
        state.drafter, state.predicted = choice.drafter, choice.predicted

    def tree_ok(self, seq: Sequence) -> bool:
        """Whether `seq` may get a draft tree: greedy, and drafted by the suffix drafter alone."""
        return seq.params.greedy and self.suffix is not None and self.allowed(seq) == ("suffix",)

    def draft_tree(self, seq: Sequence, k: int, max_nodes: int, cost: Callable[[int], float] | None = None) -> None:
        """Set `seq.draft_ids` / `seq.draft_parents` to a draft tree of at most `max_nodes` nodes and
        depth `k` (none: a plain step): the suffix drafter's candidate branches (global tree and
        prompt lookup, `SuffixDrafter.tree_candidates`), their chances scaled by the request's
        calibration of its trees (`TREE_SOURCE`: accepted over predicted nodes, as for chains), cut by
        `chooser.choose_tree` to the most expected tokens per verify cost. Every node is one verify
        row, so the cost is `VerifyCost.of` the node count, or `cost(nodes)` when given."""
        assert self.suffix is not None
        state = seq.spec if seq.spec is not None else SpecState()
        seq.spec = state
        c = state.stats.setdefault(TREE_SOURCE, DrafterStats()).calibration
        # a node whose chance is below the cost of a row never raises expected tokens per cost
        raw = self.suffix.tree_candidates(seq.token_ids, k, min_prob=self.cost.per_token / c)
        tree = choose_tree({path: min(1.0, c * p) for path, p in raw.items()}, cost or self.cost.of, max_nodes)
        if tree is None:
            seq.draft_ids, seq.draft_parents = [], None
            state.drafter, state.predicted = None, 0.0
            return
        seq.draft_ids, seq.draft_parents = tree.tokens, tree.parents
        state.drafter, state.predicted = TREE_SOURCE, sum(raw[path] for path in tree.paths)

    @staticmethod
    def record(seq: Sequence, accepted: int) -> None:
        """The verify step of `seq.draft_ids` accepted `accepted` of them."""
        seq.usage.spec_proposed_tokens += len(seq.draft_ids)
        seq.usage.spec_accepted_tokens += accepted
        if seq.spec is not None:
            seq.spec.record(accepted)
