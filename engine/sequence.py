"""The engine's vocabulary: SamplingParams, Sequence, Usage and RequestOutput.

A `Sequence` is the one object that flows through the engine: the scheduler moves it between
queues, the KV manager gives it blocks, the runner reads its tokens, the sampler appends to it.
"""

from __future__ import annotations

import enum
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.errors import InvalidRequestError


@dataclass(slots=True)
class SamplingParams:
    """How to sample one request. `temperature == 0` is greedy.

    Raises InvalidRequestError (a ValueError) on out-of-range values.
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    max_tokens: int = 64
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    seed: int | None = None
    json_schema: str | dict | None = None  # constrain the output to JSON matching this schema
    grammar: str | None = None  # or to this EBNF grammar (xgrammar syntax)
    # or to this xgrammar structural tag (JSON); its `token` formats may name special tokens, which
    # the grammar then matches token by token (how chat formats constrain tool calls)
    structural_tag: str | dict | None = None
    # Speculative decoding for this request: True = the engine picks among its drafters every step
    # (engine/speculative/chooser.py), False = off, or the name of one of the engine's drafters
    # ("suffix", "ngram", "mtp", "draft"), whose draft length is still chosen per step.
    speculative: bool | str = True
    # Scheduling: lower `priority` is more urgent (as in vLLM); the engine serves waiting requests
    # by (priority, arrival) and preempts the least urgent running one first. `program_id` names the
    # agent program (job) the request belongs to: among equal priorities the engine then serves
    # programs in the order they first arrived, not requests (engine/scheduler.py). It never
    # changes the output.
    priority: int = 0
    program_id: str | None = None

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.json_schema, self.grammar, self.structural_tag)) > 1:
            raise InvalidRequestError("give one of json_schema, grammar or structural_tag, not several")
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(self.stop)
        self.stop_token_ids = tuple(int(t) for t in self.stop_token_ids)
        if not (isinstance(self.temperature, int | float) and math.isfinite(self.temperature)) or self.temperature < 0:
            raise InvalidRequestError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise InvalidRequestError(f"top_k must be None or an int >= 1, got {self.top_k!r}")
        if not (0.0 < self.top_p <= 1.0):
            raise InvalidRequestError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise InvalidRequestError(f"max_tokens must be an int >= 1, got {self.max_tokens!r}")
        if any(not s for s in self.stop):
            raise InvalidRequestError("stop strings must be non-empty")
        if not isinstance(self.priority, int) or isinstance(self.priority, bool):
            raise InvalidRequestError(f"priority must be an int (lower is more urgent), got {self.priority!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def constrained(self) -> bool:
        return self.json_schema is not None or self.grammar is not None or self.structural_tag is not None


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class FinishReason(enum.Enum):
    STOP = "stop"  # eos, a stop token or a stop string
    LENGTH = "length"  # max_tokens or the context length
    ABORT = "abort"  # cancelled by the caller


@dataclass(slots=True)
class Usage:
    """Per-request accounting. `cached_tokens` were read from the prefix cache, not computed."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    prefill_tokens_computed: int = 0
    generated_tokens: int = 0
    device_seconds: float = 0.0
    kv_byte_seconds: float = 0.0  # KV bytes held x seconds, over the steps the request ran in
    spec_proposed_tokens: int = 0
    spec_accepted_tokens: int = 0
    num_preemptions: int = 0
    # Prompt tokens computed in passes before a preemption: engine work spent, whether re-admission
    # later finds their KV cached or computes it again (Scheduler.num_recomputed_tokens counts those).
    recomputed_tokens: int = 0
    kv_restored_bytes_host: int = 0  # KV copied back from the host tier for this request's prefix
    kv_restored_bytes_disk: int = 0  # ... and from the disk tier


_seq_ids = itertools.count()


@dataclass(slots=True, eq=False)
class Sequence:
    """One request inside the engine.

    Invariants: `num_computed_tokens <= len(token_ids)`; the first `num_computed_tokens` tokens have
    their KV in the blocks of `block_table`; `num_cached_tokens` of those came from the prefix cache.
    """

    token_ids: list[int]
    params: SamplingParams
    request_id: str | None = None
    seq_id: int = field(default_factory=lambda: next(_seq_ids))
    num_prompt_tokens: int = 0
    num_computed_tokens: int = 0
    block_table: list[int] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: FinishReason | None = None
    usage: Usage = field(default_factory=Usage)
    generator: torch.Generator | None = None
    prefix_node: object | None = None  # the radix node locked for this sequence's cached prefix
    computed_before: int = 0  # tokens whose KV this sequence had computed when it was last preempted
    arrival: float = 0.0
    first_token_time: float | None = None
    stop_text: str = ""  # decoded text, kept only when stop strings are set
    matcher: object | None = None  # xgrammar GrammarMatcher for structured output
    draft_ids: list[int] = field(default_factory=list)  # speculative tokens proposed for this step
    # A draft tree (speculative/chooser.py TreeDraft): draft i's parent among the drafts, -1 for the last
    # token; None: the drafts are a chain.
    draft_parents: list[int] | None = None
    # engine.speculative.chooser.SpecState, set by the Speculator: per-drafter acceptance history and the
    # current draft's source (typed Any: engine.speculative imports this module, not the other way)
    spec: Any = None
    mtp_draft: int | None = None  # the MTP module's guess for the token after the last one
    priority: int = 0  # the scheduling priority now (starts at params.priority; lower = more urgent)
    order: int = 0  # arrival rank in the scheduler (ties between equal priorities: first come first)
    rank: int = 0  # its program's first arrival rank (== order without a program_id); orders before `order`
    queue_version: int = 0  # bumped whenever the waiting-queue entry for this sequence goes stale

    def __post_init__(self) -> None:
        self.num_prompt_tokens = self.num_prompt_tokens or len(self.token_ids)
        self.usage.prompt_tokens = self.num_prompt_tokens
        if self.request_id is None:
            self.request_id = str(self.seq_id)
        self.priority = self.params.priority
        if self.params.seed is not None and self.generator is None:
            self.generator = torch.Generator().manual_seed(self.params.seed)

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED


@dataclass(slots=True)
class RequestOutput:
    """What `LLM.generate` returns per request, and what `LLM.stream` yields (with `delta_*`)."""

    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finished: bool
    finish_reason: FinishReason | None
    usage: Usage
    delta_token_ids: list[int] = field(default_factory=list)
    delta_text: str = ""
