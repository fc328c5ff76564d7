"""`RayEngineClient`: the EngineClient over engine replicas on Ray, behind the KV-aware router.

Each request's prompt is cut into chained block hashes; the router picks a replica from them (and
from the conversation the request continues, found through the pins the runtime places on
sessions); the replica's reply carries its block events, which update the router's index. A
request whose replica dies is re-sent (the dead replica is replaced) up to `max_retries` times.
Disaggregated: a prefill replica computes the prompt's KV, which travels through Ray's object
store straight to the decode replica that generates; the driver only holds the reference.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from ray.exceptions import RayActorError

from agentrt.backends.local_tokenizer import LocalTokenizer
from agentrt.engine_client import LLMRequest, LLMResponse
from agentrt.errors import AgentrtError
from agentrt.ray.pool import ReplicaPool
from agentrt.ray.replica import ReplicaReply
from engine.kv.tiers import block_keys

logger = logging.getLogger(__name__)


class ReplicaLostError(AgentrtError):
    """A request failed on every replica it was sent to (each died under it)."""


@dataclass(slots=True)
class RoutingStats:
    num_requests: int = 0
    num_retries: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens the serving replica found in its cache
    num_moved: int = 0  # requests continuing a pinned conversation sent to a replica other than the pin's
    tokens_by_replica: dict[str, int] = field(default_factory=dict)  # tokens computed (prefill + generated)

    @property
    def hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


class RayEngineClient(LocalTokenizer):
    """EngineClient over a pool of replicas (or a prefill pool and a decode pool)."""

    def __init__(self, pool: ReplicaPool, *, prefill: ReplicaPool | None = None, max_retries: int = 2) -> None:
        from engine.config import EngineConfig

        assert pool.info is not None, "start the pool first"
        self.pool, self.prefill_pool, self.max_retries = pool, prefill, max_retries
        self.model_name = pool.info.model_name
        self.block_size = pool.info.block_size
        self._load_tokenizer(EngineConfig(**pool.config.engine_options).model_path)
        self.stats = RoutingStats()
        self._tips: dict[bytes, str] = {}  # last block hash of a pinned conversation -> its session id
        self._pins: dict[str, tuple[str, bytes | None]] = {}  # pin key -> (replica, tip)
        self._hints: dict[str, str] = {}  # hint key -> replica

    # ---- routing ---------------------------------------------------------------------------
    def _session(self, hashes: list[bytes]) -> str | None:
        """The conversation this prompt continues: the pinned session whose prefix it extends."""
        return next((self._tips[h] for h in reversed(hashes) if h in self._tips), None)

    async def generate(self, request: LLMRequest) -> LLMResponse:
        hashes = block_keys(request.prompt_ids, self.block_size)
        session = self._session(hashes)
        for attempt in range(self.max_retries + 1):
            try:
                reply = await self._serve(request, hashes, session)
            except RayActorError as exc:
                if attempt == self.max_retries:
                    raise ReplicaLostError(f"request lost {attempt + 1} replicas; last error: {exc}") from exc
                self.stats.num_retries += 1
                continue
            self._account(reply)
            return reply.response
        raise AssertionError("unreachable")

    async def _call(self, pool: ReplicaPool, hashes: list[bytes], session: str | None, method: str, *args: Any,
                    num_returns: int = 1) -> Any:
        """Route, call `method` on the chosen replica, feed its block events to the index."""
        decision = pool.router.route(hashes, session)
        name, handle = decision.replica, pool.handles[decision.replica]
        if pool is self.pool and session is not None and self._pins.get(session, (name,))[0] != name:
            self.stats.num_moved += 1
        pool.router.index.apply(name, stored=hashes)  # optimistic: the prompt's blocks land there
        pool.router.begin(name, hashes, cached_blocks=decision.overlap_blocks)
        try:
            refs = getattr(handle, method).options(num_returns=num_returns).remote(*args)
            reply: ReplicaReply = await (refs[-1] if num_returns > 1 else refs)
        except RayActorError:
            pool.replace(name, handle)
            raise
        finally:
            pool.router.end(name, hashes)
        # The events, then what the optimistic guess got wrong: prompt blocks past the replica's
        # cached prefix are not there now (a full cache dropped or never kept them).
        stored = reply.events.stored
        pool.router.index.apply(name, stored, [*reply.events.removed, *hashes[len(stored):]])
        u = reply.response.usage
        work = self.stats.tokens_by_replica
        work[name] = work.get(name, 0) + u.prefill_tokens_computed + u.generated_tokens
        return (refs[0], reply) if num_returns > 1 else reply

    async def _serve(self, request: LLMRequest, hashes: list[bytes], session: str | None) -> ReplicaReply:
        if self.prefill_pool is None:
            return await self._call(self.pool, hashes, session, "generate", request)
        kv_ref, _ = await self._call(self.prefill_pool, hashes, session, "prefill", request, num_returns=2)
        return await self._call(self.pool, hashes, session, "generate", request, kv_ref)

    def _account(self, reply: ReplicaReply) -> None:
        u = reply.response.usage
        self.stats.num_requests += 1
        self.stats.prompt_tokens += u.prompt_tokens
        self.stats.cached_tokens += u.cached_tokens

    # ---- text: encode/decode/special_id/chat_format from LocalTokenizer -----------------------

    # ---- cache control: sent to the replica holding the most of the prefix ---------------------
    def _holder(self, token_ids: list[int]) -> tuple[str, bytes | None]:
        hashes = block_keys(token_ids, self.block_size)
        overlap = self.pool.router.index.overlap(hashes)
        name = max(overlap, key=lambda r: overlap[r]) if overlap else self.pool.router.route(hashes).replica
        return name, hashes[-1] if hashes else None

    def pin(self, key: str, token_ids: list[int], ttl: float | None) -> None:
        self.unpin(key)
        name, tip = self._holder(token_ids)
        self._pins[key] = (name, tip)
        if tip is not None:
            self._tips[tip] = key
        self.pool.handles[name].pin.remote(key, token_ids, ttl)

    def unpin(self, key: str) -> None:
        old = self._pins.pop(key, None)
        if old is None:
            return
        name, tip = old
        if tip is not None and self._tips.get(tip) == key:
            del self._tips[tip]
        if name in self.pool.handles:
            self.pool.handles[name].unpin.remote(key)

    def hint(self, key: str, token_ids: list[int], steps: float) -> None:
        name, _ = self._holder(token_ids)
        old = self._hints.get(key)
        if old is not None and old != name and old in self.pool.handles:
            self.pool.handles[old].unhint.remote(key)
        self._hints[key] = name
        self.pool.handles[name].hint.remote(key, token_ids, steps)

    def unhint(self, key: str) -> None:
        name = self._hints.pop(key, None)
        if name is not None and name in self.pool.handles:
            self.pool.handles[name].unhint.remote(key)

    def set_program_priority(self, program_id: str, priority: int) -> None:
        """Re-prioritise the program's in-flight requests on every replica (a replica without any ignores it)."""
        for handle in self.pool.handles.values():
            handle.set_program_priority.remote(program_id, priority)

    def kv_capacity_tokens(self) -> int:
        return self.pool.kv_capacity_tokens

    def max_batch(self) -> int:
        return self.pool.max_batch
