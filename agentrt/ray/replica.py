"""One engine replica: an `engine.LLM` with its own KV cache, run as a Ray actor.

The class is plain Python (`ReplicaPool` wraps it with `ray.remote`), so it imports no Ray. Every
reply carries the replica's block events since the last reply (hashes of blocks now cached for
the request's tokens, hashes evicted meanwhile): that is the feed the router's index follows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import msgspec

from agentrt.engine_client import EmbeddedEngine, LLMRequest, LLMResponse

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class BlockEvents:
    stored: list[bytes] = field(default_factory=list)
    removed: list[bytes] = field(default_factory=list)


@dataclass(slots=True)
class ReplicaReply:
    response: LLMResponse
    events: BlockEvents


@dataclass(slots=True, frozen=True)
class ReplicaInfo:
    model_name: str
    block_size: int
    kv_capacity_tokens: int
    max_batch: int
    node_id: str
    pid: int


class EngineReplica:
    """An engine replica. Methods are async so that Ray runs a replica's requests concurrently
    (the engine batches them continuously)."""

    def __init__(self, name: str, engine_options: dict[str, Any]) -> None:
        from engine import LLM
        from engine.kv.transfer import watch_evictions

        self.name = name
        self.engine = EmbeddedEngine(LLM(**engine_options))
        self.llm = self.engine.llm
        self._removed: list[bytes] = []
        watch_evictions(self.llm, self._removed.extend)
        logger.info("engine replica %s ready", name)

    def info(self) -> ReplicaInfo:
        import os

        import ray

        return ReplicaInfo(self.engine.model_name, self.llm.config.block_size, self.engine.kv_capacity_tokens(),
                           self.engine.max_batch(), ray.get_runtime_context().get_node_id(), os.getpid())

    def _events(self, token_ids: list[int]) -> BlockEvents:
        from engine.kv.transfer import cached_blocks

        removed, self._removed = self._removed, []
        return BlockEvents(cached_blocks(self.llm, token_ids), removed)

    async def generate(self, request: LLMRequest, prefix: Any = None) -> ReplicaReply:
        """Serve `request`; `prefix` (a PrefixKV from a prefill replica) is imported first."""
        if prefix is not None:
            from engine.kv.transfer import import_prefix

            import_prefix(self.llm, prefix)
        response = await self.engine.generate(request)
        # The last generated token has no KV yet: the cache ends one token before the output does.
        return ReplicaReply(response, self._events(request.prompt_ids + response.token_ids[:-1]))

    async def prefill(self, request: LLMRequest) -> tuple[Any, ReplicaReply]:
        """Compute the prompt's KV (one token generated) and export its whole blocks. Called with
        num_returns=2, so the KV goes to the object store and the driver fetches only the reply."""
        from engine.kv.transfer import export_prefix

        first = msgspec.structs.replace(request, max_tokens=1, ignore_eos=True)
        response = await self.engine.generate(first)
        return export_prefix(self.llm, request.prompt_ids), ReplicaReply(response, self._events(request.prompt_ids))

    def snapshot(self) -> list[bytes]:
        """Every block this replica caches (for a router rebuilding its index)."""
        from engine.kv.transfer import all_cached_blocks

        return all_cached_blocks(self.llm)

    def pin(self, key: str, token_ids: list[int], ttl: float | None) -> None:
        self.engine.pin(key, token_ids, ttl)

    def set_program_priority(self, program_id: str, priority: int) -> None:
        self.engine.set_program_priority(program_id, priority)

    def unpin(self, key: str) -> None:
        self.engine.unpin(key)

    def hint(self, key: str, token_ids: list[int], steps: float) -> None:
        self.engine.hint(key, token_ids, steps)

    def unhint(self, key: str) -> None:
        self.engine.unhint(key)

    def stats(self) -> dict[str, float]:
        return self.llm.stats()
