"""EngineCore: validation, the step loop (schedule -> run -> sample -> stop checks) and accounting.

Thread-safety: `add`/`abort` may be called from any thread (they only append to inboxes);
`step` must be called from one thread at a time. Requests are validated before they are queued,
so a bad request raises in its caller and never disturbs the requests already running.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from engine.config import EngineConfig
from engine.errors import InvalidRequestError
from engine.kv.movement import TierMover
from engine.kv.pins import Pin, PinHooks, PinTable
from engine.kv.radix import RadixNode
from engine.kv.storage import StorageWorker
from engine.kv.tiers import DiskKVTier, HostKVTier
from engine.model.config import ModelConfig
from engine.runner import MAX_TREE_NODES, ModelRunner, kv_bytes_per_block
from engine.scheduler import Scheduler, blocks_needed
from engine.sequence import FinishReason, SamplingParams, Sequence
from engine.speculative.chooser import VerifyCost
from engine.speculative.speculator import Speculator
from engine.structured import GrammarFactory

logger = logging.getLogger(__name__)
# Hinted prefixes the eviction order protects per step: the soonest announced. Walking every hint
# each step (96 agents' ~4k-token prompts) cost agent serving ~8% of its step thread; the rest
# count as unannounced (LRU).
HINT_WALK = 16


@dataclass(slots=True)
class StepOutput:
    """What one step did to one sequence: tokens appended (possibly none) and whether it finished."""

    seq: Sequence
    new_token_ids: list[int] = field(default_factory=list)


@dataclass(slots=True)
class EngineStats:
    num_steps: int = 0
    num_tokens: int = 0
    device_seconds: float = 0.0


class EngineCore:
    def __init__(
        self,
        model: torch.nn.Module,
        model_config: ModelConfig,
        config: EngineConfig,
        detokenize: Callable[[list[int]], str] | None = None,
        grammars: GrammarFactory | None = None,
    ) -> None:
        self.model_config = model_config
        self.config = config
        self.max_model_len = config.max_model_len or model_config.max_position_embeddings
        self.eos_token_ids = frozenset(model_config.eos_token_id or ())
        dtype = next(model.parameters()).dtype
        num_blocks = config.num_kv_blocks or max(
            1, int(config.kv_cache_memory_gb * 2**30) // kv_bytes_per_block(model_config, config.block_size, dtype)
        )
        self.scheduler = Scheduler(config, num_blocks)
        self.kv_bytes_per_token = kv_bytes_per_block(model_config, config.block_size, dtype) / config.block_size
        self.runner = ModelRunner(model, model_config, config, num_blocks)
        self.detokenize = detokenize
        self.grammars = grammars
        # Drafting and the per-step drafter choice; "mtp" and "draft" tokens come from the runner.
        self.speculator = Speculator(config.drafters, VerifyCost(config.spec_verify_overhead, config.spec_token_cost))
        disk = DiskKVTier(config.disk_kv_dir, config.disk_kv_blocks) if config.disk_kv_dir and config.disk_kv_blocks else None
        # Disk writes and prefetch reads run on the storage worker, never on the step thread.
        storage = StorageWorker(config.kv_storage_budget_bytes) if disk is not None else None
        self.host_tier = HostKVTier(config.host_kv_blocks, disk, config.disk_kv_min_hits, storage) \
            if config.host_kv_blocks and self.scheduler.radix else None
        self.mover: TierMover | None = None
        if self.host_tier is not None:
            self.mover = TierMover(self.scheduler, self.runner.kv_cache, self.host_tier)
            self.scheduler.radix.on_evict = self.mover.offload  # type: ignore[union-attr]
            self.scheduler.extend_prefix = self.mover.restore
        self.stats = EngineStats()
        self._inbox: deque[Sequence] = deque()
        self._aborts: deque[str] = deque()
        self._priority_cmds: deque[tuple[str, int]] = deque()
        self.pin_table: PinTable | None = None
        if self.scheduler.radix is not None:
            mover = self.mover
            hooks = PinHooks(mover.copy_to_host if mover else None, mover.restore_from_host if mover else None,
                             self._resume_seconds_per_token, self._working_set, lambda: len(self.scheduler.waiting))
            self.pin_table = PinTable(self.scheduler.radix, self.scheduler.pool, hooks, config.kv_pause_fraction)
            self.scheduler.release_pins = self.pin_table.release_one
        # Graph-aware cache hints: key -> (token ids, steps until needed, expiry); see `hint`.
        self._hint_cmds: deque[tuple[str, list[int] | None, float, float | None]] = deque()
        self.hints: dict[str, tuple[list[int], float, float | None]] = {}
        self._soon: dict[RadixNode, float] | None = None  # _next_use of this step (None: not walked yet)
        if self.scheduler.radix is not None:
            self.scheduler.radix.next_use = self._next_use
        self._by_id: dict[str, Sequence] = {}
        self._lock = threading.Lock()

    # ---- requests ----------------------------------------------------------------------
    def validate(self, token_ids: list[int], params: SamplingParams) -> None:
        """Raise InvalidRequestError unless the request can be served."""
        if not isinstance(params, SamplingParams):
            raise InvalidRequestError(f"params must be SamplingParams, got {type(params).__name__}")
        if len(token_ids) == 0:
            raise InvalidRequestError("prompt is empty: at least one token is required")
        if len(token_ids) >= self.max_model_len:
            raise InvalidRequestError(
                f"prompt has {len(token_ids)} tokens; the context length is {self.max_model_len}"
            )
        vocab = self.model_config.vocab_size
        bad = next((t for t in token_ids if not isinstance(t, int) or not 0 <= t < vocab), None)
        if bad is not None:
            raise InvalidRequestError(f"token id {bad!r} is outside the vocabulary [0, {vocab})")
        bad = next((t for t in params.stop_token_ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise InvalidRequestError(f"stop token id {bad} is outside the vocabulary [0, {vocab})")
        if params.constrained and self.grammars is None:
            raise InvalidRequestError("structured output needs a tokenizer; this engine has none")
        if params.stop and self.detokenize is None:
            raise InvalidRequestError("stop strings need a tokenizer; this engine has none")
        if isinstance(params.speculative, str) and params.speculative not in self.config.drafters:
            raise InvalidRequestError(
                f"drafter {params.speculative!r} is not enabled on this engine (enabled: {list(self.config.drafters) or 'none'})"
            )
        need = min(len(token_ids) + params.max_tokens, self.max_model_len)
        if blocks_needed(need, self.config.block_size) > self.scheduler.pool.num_blocks:
            raise InvalidRequestError(
                f"request needs {need} tokens of KV cache; the cache holds "
                f"{self.scheduler.pool.num_blocks * self.config.block_size}"
            )

    def add(self, token_ids: list[int], params: SamplingParams, request_id: str | None = None) -> Sequence:
        """Validate and queue a request (any thread). Raises InvalidRequestError."""
        self.validate(token_ids, params)
        seq = Sequence(list(token_ids), params, request_id=request_id)
        if params.constrained:
            assert self.grammars is not None
            seq.matcher = self.grammars.matcher(params.json_schema, params.grammar, params.structural_tag)
        with self._lock:
            if seq.request_id in self._by_id:
                raise InvalidRequestError(f"request id {seq.request_id!r} is already in use")
            self._by_id[seq.request_id] = seq  # type: ignore[index]
        self._inbox.append(seq)
        return seq

    def abort(self, request_id: str) -> None:
        """Cancel a request (any thread); it finishes with FinishReason.ABORT at the next step."""
        self._aborts.append(request_id)

    def set_priority(self, request_id: str, priority: int) -> None:
        """Change a queued or running request's priority (any thread; lower is more urgent).
        Applied at the next step; unknown or finished requests are ignored."""
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise InvalidRequestError(f"priority must be an int (lower is more urgent), got {priority!r}")
        self._priority_cmds.append((request_id, priority))

    def pin(self, key: str, token_ids: list[int], ttl: float | None = None) -> None:
        """Keep the cached prefix of `token_ids` (e.g. a conversation between turns) from being
        evicted until `unpin(key)` or until `ttl` seconds pass. Any thread; applied at the next step.
        Pinning the same key again moves the pin to the new prefix. Under KV pressure a pin with a
        TTL may be released or paused to the host tier (engine.kv.pins). No-op without prefix caching."""
        if self.pin_table is not None:
            self.pin_table.pin(key, token_ids, ttl)

    def unpin(self, key: str) -> None:
        """Release a pin (any thread); unknown keys are ignored."""
        if self.pin_table is not None:
            self.pin_table.unpin(key)

    def hint(self, key: str, token_ids: list[int], steps: float, ttl: float | None = None) -> None:
        """Tell the cache that a task will need the prefix `token_ids` in about `steps` scheduling
        steps (the runtime's steps-to-execution, as in KVFlow). Eviction then takes prefixes nobody
        announced first (LRU), then announced ones, furthest-off first; with a host tier, a prefix
        announced for `steps <= 1` is restored to the device ahead of its request, counting the
        requests already waiting in the engine as steps ahead of it (under a queue a prefetch was
        evicted again before its request was admitted, and took the blocks of preempted requests
        with it: agent serving's "+graph" recomputed 127k tokens, docs/benchmarks.md). Unlike `pin` it
        never blocks eviction. Any thread; replaces the key's previous hint; `ttl` in seconds."""
        self._hint_cmds.append((key, list(token_ids), float(steps), ttl))

    def unhint(self, key: str) -> None:
        """Withdraw a hint (any thread); unknown keys are ignored."""
        self._hint_cmds.append((key, None, 0.0, None))

    def _apply_hints(self) -> None:
        self._soon = None  # once per step, and whenever the hints change: the next eviction walks them again
        now = time.monotonic()
        ahead = len(self.scheduler.waiting)  # the engine's queue runs before a hinted task's request
        while self._hint_cmds:
            key, token_ids, steps, ttl = self._hint_cmds.popleft()
            if token_ids is None:
                self.hints.pop(key, None)
                continue
            self.hints[key] = (token_ids, steps, None if ttl is None else now + ttl)
            if steps + ahead <= 1 and self.mover is not None:
                self.mover.prefetch(token_ids)
                self._soon = None  # the walk before the prefetch's eviction did not see the nodes it restored
        for key in [k for k, (_, _, exp) in self.hints.items() if exp is not None and exp <= now]:
            del self.hints[key]
        if self.mover is not None and self.mover.host.collect():  # disk reads that finished: to the device
            for token_ids, steps, _ in list(self.hints.values()):
                if steps + ahead <= 1:
                    self.mover.prefetch(token_ids)
                    self._soon = None

    def _next_use(self) -> dict[RadixNode, float]:
        """Radix eviction hook: every node on a hinted prefix (the HINT_WALK soonest hints) -> the
        soonest steps announced for it. While any hint is live, the prefixes of the HINT_WALK most
        urgent requests waiting in the engine count as announced for 0 steps (KVFlow's
        steps-to-execution: a queued request runs before any task still in a tool call). Without
        that, an agent whose tool had returned lost its hint, its request queued unannounced, and
        eviction took its prefix first to keep agents still in their tools (agent serving, "+graph"
        restored and recomputed more than "+pins"). Without hints: plain LRU. Walked once per
        step (an eviction can run many times in one step's admissions, and walking every hinted
        prompt each time cost agent serving seconds of step-thread time); a node the step inserts
        after the walk counts as unannounced until the next step."""
        if self._soon is not None:
            return self._soon
        radix = self.scheduler.radix
        assert radix is not None
        soon: dict[RadixNode, float] = {}
        hints = list(self.hints.values())
        if len(hints) > HINT_WALK:
            hints = heapq.nsmallest(HINT_WALK, hints, key=lambda h: h[1])
        if hints:
            hints += [(seq.token_ids, 0.0, None) for seq in self.scheduler.waiting.soonest(HINT_WALK)]
        for token_ids, steps, _ in hints:
            for node in radix.path_nodes(token_ids):
                soon[node] = min(steps, soon.get(node, steps))
        self._soon = soon
        return soon

    @property
    def pins(self) -> dict[str, Pin]:
        """Pinned prefixes by key (empty without prefix caching)."""
        return self.pin_table.pins if self.pin_table is not None else {}

    @property
    def num_pins_released(self) -> int:
        """Pins given up early under KV pressure (see engine.kv.pins)."""
        return self.pin_table.num_released if self.pin_table is not None else 0

    def _working_set(self) -> int:
        """Device blocks held by running requests or pinned prefixes, O(those blocks)."""
        used = {b for seq in self.scheduler.running for b in seq.block_table}
        for pin in self.pins.values():
            node = pin.node
            while isinstance(node, RadixNode) and node.parent is not None:
                used.update(node.blocks)
                node = node.parent
        return len(used)

    def _resume_seconds_per_token(self) -> float:
        """What bringing back a released prefix costs per token: with a host tier, a host-tier copy
        at its measured rate (restores; before the first restore, offloads: the same copy the other
        way), else (no host tier, or no copy measured yet) recomputing it at the engine's rate.

        Before offloads were timed, a host tier with no restore yet priced a release at the
        recompute rate, so pins were kept, nothing was ever released or restored, and requests
        waited out the pins' TTLs while the engine idled (agent serving, "+pins")."""
        host, bs = self.host_tier, self.config.block_size
        if host is not None and host.num_restored and host.restore_seconds > 0:
            return host.restore_seconds / host.num_restored / bs
        if host is not None and host.num_offloaded and host.offload_seconds > 0:
            return host.offload_seconds / host.num_offloaded / bs
        return self.stats.device_seconds / self.stats.num_tokens if self.stats.num_tokens else 0.0

    def has_unfinished(self) -> bool:
        return bool(self._inbox or self._aborts or self._hint_cmds or self.scheduler.has_unfinished())

    # ---- the step ----------------------------------------------------------------------
    def step(self) -> list[StepOutput]:
        """Run one engine step; return an output for every sequence that advanced or finished."""
        outputs = self._drain()
        if self.config.drafters:
            self._propose_drafts()
        batch = self.scheduler.schedule()
        if not batch.seqs:
            return outputs
        tokens, accepted, seconds = self.runner.execute(batch)
        self.stats.num_steps += 1
        self.stats.num_tokens += batch.num_tokens
        self.stats.device_seconds += seconds
        for seq, num_new, new, acc in zip(batch.seqs, batch.num_new_tokens, tokens, accepted, strict=True):
            # Device time is split across the step's requests by the tokens each one processed.
            seq.usage.device_seconds += seconds * num_new / batch.num_tokens
            seq.usage.kv_byte_seconds += (seq.num_computed_tokens + num_new) * self.kv_bytes_per_token * seconds
            rejected = len(seq.draft_ids) - acc
            if seq.draft_ids:
                self.speculator.record(seq, acc)
            seq.draft_ids, seq.draft_parents = [], None
            old_len = len(seq)
            seq.token_ids.extend(new)
            self.scheduler.advance(seq, num_new - rejected)  # KV of the accepted tokens is now valid
            appended = self._check_stops(seq, old_len)
            if appended:
                outputs.append(StepOutput(seq, appended))
        return outputs

    def _check_stops(self, seq: Sequence, old_len: int) -> list[int]:
        """Walk the tokens appended this step; at the first that finishes the request, drop the
        rest and finish it. Returns the tokens kept."""
        for j in range(old_len, len(seq)):
            seq.usage.generated_tokens += 1
            reason = self._stop_reason(seq, seq.token_ids[j], upto=j + 1)
            if reason is not None:
                del seq.token_ids[j + 1 :]
                seq.num_computed_tokens = min(seq.num_computed_tokens, len(seq) - 1)
                self._finish(seq, reason)
                break
        return seq.token_ids[old_len:]

    def _propose_drafts(self) -> None:
        k_max = self.config.num_speculative_tokens
        for seq in self.scheduler.running:
            if seq.num_uncomputed_tokens != 1 or seq.matcher is not None or seq.params.speculative is False:
                continue
            room = min(seq.params.max_tokens - seq.num_output_tokens - 1, self.max_model_len - len(seq) - 1)
            k = min(k_max, room)
            if k > 0 and self.runner.tree_verification and self.speculator.tree_ok(seq):
                self.speculator.draft_tree(seq, k, MAX_TREE_NODES)
            elif k > 0:
                self.speculator.draft(seq, k)

    def _drain(self) -> list[StepOutput]:
        if self.pin_table is not None:
            self.pin_table.apply()
            self.pin_table.balance()  # ThunderAgent: pause/resume agents waiting on tools
        self._apply_hints()
        while self._inbox:
            new = self._inbox.popleft()
            self.scheduler.add(new)
            self.speculator.observe(new.request_id, new.token_ids)
        while self._priority_cmds:
            request_id, priority = self._priority_cmds.popleft()
            target = self._by_id.get(request_id)
            if target is not None:
                self.scheduler.set_priority(target, priority)
        outputs = []
        while self._aborts:
            seq = self._by_id.get(self._aborts.popleft())
            if seq is not None and not seq.is_finished:
                self._finish(seq, FinishReason.ABORT)
                outputs.append(StepOutput(seq))
        return outputs

    def _finish(self, seq: Sequence, reason: FinishReason) -> None:
        self.scheduler.finish(seq, reason)
        self.speculator.observe(seq.request_id, seq.token_ids)  # its output joins the global suffix tree
        with self._lock:
            self._by_id.pop(seq.request_id, None)  # type: ignore[arg-type]

    def _stop_reason(self, seq: Sequence, token: int, upto: int | None = None) -> FinishReason | None:
        params = seq.params
        if not params.ignore_eos and token in self.eos_token_ids:
            return FinishReason.STOP
        if token in params.stop_token_ids:
            return FinishReason.STOP
        if seq.matcher is not None and seq.matcher.is_terminated():  # type: ignore[attr-defined]
            return FinishReason.STOP
        if params.stop and self.detokenize is not None:
            text = self.detokenize(seq.token_ids[seq.num_prompt_tokens : upto])
            hits = [text.find(s) for s in params.stop if s in text]
            if hits:
                seq.stop_text = text[: min(hits)]
                return FinishReason.STOP
        length = len(seq) if upto is None else upto
        if length - seq.num_prompt_tokens >= params.max_tokens or length >= self.max_model_len:
            return FinishReason.LENGTH
        return None
