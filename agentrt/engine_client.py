"""The seam between the runtime and inference: the `EngineClient` protocol and its in-process
implementation over `engine.LLM`. Nothing else in agentrt may assume the engine shares the process."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any, Protocol

import anyio
import msgspec

from agentrt.errors import LLMTimeoutError
from agentrt.types import Usage


class LLMRequest(msgspec.Struct, kw_only=True):
    prompt_ids: list[int]
    max_tokens: int = 256
    temperature: float = 0.0
    stop_token_ids: list[int] = []
    json_schema: dict[str, Any] | None = None
    # an xgrammar structural tag (the chat format's tool-call grammar, engine.chat.grammar); at most
    # one of json_schema and structural_tag
    structural_tag: dict[str, Any] | None = None
    ignore_eos: bool = False
    seed: int | None = None
    priority: int = 0  # lower is more urgent (the runtime sets it from the job's attained service)
    program_id: str | None = None  # the job the request belongs to (see `set_program_priority`)


class LLMResponse(msgspec.Struct, kw_only=True):
    token_ids: list[int]
    text: str
    finish_reason: str
    usage: Usage
    ttft: float = 0.0  # seconds from submission to the first generated token


TokenSink = Callable[[list[int], str], None]  # (new token ids, their text) after each engine step


class EngineClient(Protocol):
    """An engine that can stream sets `streams_tokens = True` and takes `on_tokens=` (a TokenSink) in generate."""

    model_name: str

    async def generate(self, request: LLMRequest) -> LLMResponse: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, token_ids: list[int]) -> str: ...

    def special_id(self, token: str) -> int: ...

    def pin(self, key: str, token_ids: list[int], ttl: float | None) -> None: ...

    def unpin(self, key: str) -> None: ...

    def hint(self, key: str, token_ids: list[int], steps: float) -> None: ...

    def unhint(self, key: str) -> None: ...

    def set_program_priority(self, program_id: str, priority: int) -> None: ...

    def kv_capacity_tokens(self) -> int: ...

    def max_batch(self) -> int: ...


class EmbeddedEngine:
    """EngineClient over an in-process `engine.LLM` (the default model when none is given)."""

    def __init__(self, llm: Any = None, model_name: str = "agentrt-default", *, timeout: float | None = 600.0) -> None:
        """`timeout`: seconds one LLM call may take before it is aborted (LLMTimeoutError); None: no limit."""
        from engine import LLM

        self.timeout = timeout

        self.llm = llm if llm is not None else LLM()
        if self.llm.tokenizer is None:
            raise ValueError("the runtime needs a model with a tokenizer (tokenizer.json)")
        self.model_name = model_name if llm is None else str(self.llm.config.model_path.name)
        self._ids = itertools.count()
        self._live: dict[str, dict[str, None]] = {}  # program id -> its requests in the engine

    streams_tokens = True

    async def generate(self, request: LLMRequest, on_tokens: TokenSink | None = None) -> LLMResponse:
        """`on_tokens` receives each engine step's new tokens as they are generated."""
        from engine import SamplingParams

        params = SamplingParams(
            temperature=request.temperature, max_tokens=request.max_tokens,
            stop_token_ids=tuple(request.stop_token_ids), json_schema=request.json_schema,
            structural_tag=request.structural_tag, ignore_eos=request.ignore_eos, seed=request.seed, priority=request.priority, program_id=request.program_id,
        )
        last = None
        start = time.perf_counter()
        ttft = 0.0
        rid = f"{request.program_id or 'req'}#{id(self):x}-{next(self._ids)}"
        live = self._live.setdefault(request.program_id, {}) if request.program_id else {}
        live[rid] = None
        try:
            with anyio.move_on_after(self.timeout) as scope:  # leaving the stream aborts the request, freeing its KV
                async for out in self.llm.stream(request.prompt_ids, params, request_id=rid):
                    if last is None:
                        ttft = time.perf_counter() - start
                    last = out
                    if on_tokens is not None and out.delta_token_ids:
                        on_tokens(list(out.delta_token_ids), out.delta_text)
        finally:
            live.pop(rid, None)
            if request.program_id and not live:
                self._live.pop(request.program_id, None)
        if scope.cancelled_caught:
            raise LLMTimeoutError(f"LLM call of {len(request.prompt_ids)} prompt tokens took longer than {self.timeout}s; aborted")
        assert last is not None
        u = last.usage
        usage = Usage(prompt_tokens=u.prompt_tokens, cached_tokens=u.cached_tokens,
                      prefill_tokens_computed=u.prefill_tokens_computed, generated_tokens=u.generated_tokens,
                      device_seconds=u.device_seconds, kv_byte_seconds=u.kv_byte_seconds,
                      kv_restored_bytes_host=u.kv_restored_bytes_host, kv_restored_bytes_disk=u.kv_restored_bytes_disk,
                      spec_proposed_tokens=u.spec_proposed_tokens, spec_accepted_tokens=u.spec_accepted_tokens,
                      recomputed_tokens=u.recomputed_tokens)
        reason = last.finish_reason.value if last.finish_reason else "stop"
        return LLMResponse(token_ids=list(last.token_ids), text=last.text, finish_reason=reason, usage=usage, ttft=ttft)

    def encode(self, text: str) -> list[int]:
        return self.llm.encode(text)

    def decode(self, token_ids: list[int]) -> str:
        return self.llm.decode(token_ids)

    def special_id(self, token: str) -> int:
        idx = self.llm.tokenizer.token_to_id(token)
        if idx is None:
            raise ValueError(f"the model's tokenizer has no special token {token!r}")
        return int(idx)

    def pin(self, key: str, token_ids: list[int], ttl: float | None) -> None:
        self.llm.core.pin(key, token_ids, ttl)

    def unpin(self, key: str) -> None:
        self.llm.core.unpin(key)

    def hint(self, key: str, token_ids: list[int], steps: float) -> None:
        """Steps-to-execution hint: a queued LLM call will need this prefix in ~`steps` steps."""
        self.llm.core.hint(key, token_ids, steps)

    def unhint(self, key: str) -> None:
        self.llm.core.unhint(key)

    def set_program_priority(self, program_id: str, priority: int) -> None:
        """Re-prioritise every request of `program_id` still waiting or running in the engine."""
        for rid in list(self._live.get(program_id, ())):
            self.llm.core.set_priority(rid, priority)

    def kv_capacity_tokens(self) -> int:
        sched = self.llm.core.scheduler
        return sched.pool.num_blocks * sched.block_size

    def max_batch(self) -> int:
        return self.llm.config.max_num_seqs
