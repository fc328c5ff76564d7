"""A model turn's tool calls: concurrency with the model's order kept, KV pins whose TTL is the
tool's learned latency (Continuum), and next-turn hints that follow the turn's graph (KVFlow)."""

from __future__ import annotations

from typing import Any

import anyio

from agentrt import JobSpec, PoolLimits, Registry, Runtime, graph, tool
from agentrt.engine_client import LLMRequest, LLMResponse
from agentrt.errors import ToolError
from agentrt.scheduler import ServingPolicy
from agentrt.sessions import ToolLatencies
from agentrt.types import Usage
from engine.chat import ChatFormat
from engine.config import DEFAULT_MODEL_DIR

RUNNING = {"now": 0, "max": 0}


@tool
async def slow_echo(text: str, delay: float) -> str:
    RUNNING["now"] += 1
    RUNNING["max"] = max(RUNNING["max"], RUNNING["now"])
    await anyio.sleep(delay)
    RUNNING["now"] -= 1
    return text


@tool
def broken(x: int) -> int:
    raise RuntimeError(f"bad {x}")


class FakeEngine:
    """An EngineClient that answers every request with two tokens and records pins and hints."""

    model_name = "fake"
    chat_format = ChatFormat.from_model_dir(DEFAULT_MODEL_DIR)  # renders as the default model does

    def __init__(self) -> None:
        self.pins: list[tuple[str, float | None]] = []
        self.hints: list[tuple[str, float]] = []
        self.requests: list[LLMRequest] = []

    async def generate(self, request: LLMRequest) -> LLMResponse:
        self.requests.append(request)
        usage = Usage(prompt_tokens=len(request.prompt_ids), prefill_tokens_computed=len(request.prompt_ids), generated_tokens=2)
        return LLMResponse(token_ids=[5, 6], text="ok", finish_reason="stop", usage=usage)

    def encode(self, text: str) -> list[int]:
        return [ord(c) % 200 + 10 for c in text]

    def decode(self, token_ids: list[int]) -> str:
        return "ok"

    def special_id(self, token: str) -> int:
        return {"<|end|>": 1, "<|tool_call|>": 2, "<|/tool_call|>": 3}.get(token, 4)

    def pin(self, key: str, token_ids: list[int], ttl: float | None) -> None:
        self.pins.append((key, ttl))

    def unpin(self, key: str) -> None:
        pass

    def hint(self, key: str, token_ids: list[int], steps: float) -> None:
        self.hints.append((key, steps))

    def unhint(self, key: str) -> None:
        pass

    def set_program_priority(self, program_id: str, priority: int) -> None:
        pass

    def kv_capacity_tokens(self) -> int:
        return 1 << 20

    def max_batch(self) -> int:
        return 8


@graph
async def turn(ctx: Any, calls: list[list[Any]]) -> list[Any]:
    await ctx.generate("look these up", max_tokens=2)
    results = await ctx.call_all([(name, args) for name, args in calls])
    return [str(r) if isinstance(r, ToolError) else r for r in results]


def runtime(engine: FakeEngine | None, serving: ServingPolicy | None = None) -> Runtime:
    reg = Registry()
    for obj in (slow_echo, broken, turn):
        reg.register(obj)
    return Runtime(reg, engine, limits=PoolLimits(cpu=8, gpu=4), serving=serving)  # type: ignore[arg-type]


CALLS = [["slow_echo", {"text": "first", "delay": 0.15}], ["broken", {"x": 1}], ["slow_echo", {"text": "third", "delay": 0.01}]]


async def test_parallel_tool_calls_run_together_and_keep_the_models_order() -> None:
    RUNNING["max"] = 0
    res = await runtime(FakeEngine()).run_job(JobSpec(graph="turn", inputs={"calls": CALLS}))
    assert res.status == "succeeded", res.error
    assert res.output[0] == "first" and "bad 1" in res.output[1] and res.output[2] == "third"
    assert RUNNING["max"] == 2  # the two echoes overlapped (the slow first one finished last)


async def test_sequential_tool_calls_when_the_serving_policy_says_so() -> None:
    RUNNING["max"] = 0
    rt = runtime(FakeEngine(), ServingPolicy(parallel_tools=False))
    res = await rt.run_job(JobSpec(graph="turn", inputs={"calls": CALLS}))
    assert res.output[0] == "first" and res.output[2] == "third" and RUNNING["max"] == 1


async def test_the_pin_at_a_tool_call_lasts_the_tools_learned_p90_latency() -> None:
    engine = FakeEngine()
    rt = runtime(engine)
    for _ in range(10):
        rt.tool_latency.observe("slow_echo", 0.5)
    rt.tool_latency.observe("slow_echo", 9.0)  # one outlier above the p90
    await rt.run_job(JobSpec(graph="turn", inputs={"calls": [CALLS[0]]}))
    ttls = [ttl for _, ttl in engine.pins]
    assert ttls[0] == 30.0  # after the turn: the session's default, until a tool call re-pins it
    assert ttls[1] == 0.5  # at the call: the tool's p90, not the outlier
    assert len(rt.tool_latency._samples["slow_echo"]) == 12  # the call itself was observed


async def test_no_pins_when_tool_pins_are_off() -> None:
    engine = FakeEngine()
    await runtime(engine, ServingPolicy(tool_pins=False)).run_job(JobSpec(graph="turn", inputs={"calls": [CALLS[0]]}))
    assert engine.pins == []


async def test_the_next_turn_hint_follows_the_turn_graphs_shape() -> None:
    """Three independent calls run as one level: the next turn is 1 step away at once (so a host
    tier prefetches it while they run); run one after another, it is 3, 2, then 1 step away."""
    fast = [["slow_echo", {"text": t, "delay": 0.0}] for t in "abc"]
    steps = {}
    for parallel in (True, False):
        engine = FakeEngine()
        await runtime(engine, ServingPolicy(graph_hints=True, parallel_tools=parallel)).run_job(JobSpec(graph="turn", inputs={"calls": fast}))
        steps[parallel] = [s for key, s in engine.hints if key.endswith("/next")]
    assert steps[True] == [1, 1, 1]
    assert steps[False] == [3, 2, 1]


def test_tool_latency_ttl_is_the_prior_then_the_observed_quantile() -> None:
    lat = ToolLatencies(quantile=0.9, window=10, prior=7.0)
    assert lat.ttl("search") == 7.0
    for x in range(1, 21):  # the window keeps the last 10: 11..20
        lat.observe("search", float(x))
    assert lat.ttl("search") == 19.0


@graph
async def wide_after_one(ctx: Any, n: int) -> int:
    await ctx.call(slow_echo, text="setup", delay=0.0)
    async def later(i: int) -> str:
        await anyio.sleep(0.002 * i)  # later siblings start after earlier ones finished
        return await ctx.call(slow_echo, text=str(i), delay=0.0)

    await ctx.gather(*[later(i) for i in range(n)])
    return len(await ctx.call(slow_echo, text="done", delay=0.0))


async def test_gathered_calls_depend_on_what_came_before_not_on_each_other() -> None:
    reg = Registry()
    reg.register(slow_echo)
    reg.register(wide_after_one)
    rt = Runtime(reg, None, limits=PoolLimits(cpu=2))  # a saturated pool: siblings finish while others start
    res = await rt.run_job(JobSpec(graph="wide_after_one", inputs={"n": 40}))
    tasks = list(rt.jobs[res.job_id].dag.tasks.values())
    setup, middle, last = tasks[0], tasks[1:-1], tasks[-1]
    assert all(t.deps == (setup.id,) for t in middle)
    assert set(last.deps) == {t.id for t in middle}  # fan-in after the gather


class MarkerEngine(FakeEngine):
    """Opens a tool call at the default model's `<tool_call>` token; the runtime then completes it in a
    second, schema-constrained request over the same prompt (as the real engine is asked)."""

    OPEN = 7

    def special_id(self, token: str) -> int:
        return {"<|end|>": 1, "<tool_call>": self.OPEN}.get(token, 4)

    async def generate(self, request: LLMRequest) -> LLMResponse:
        self.requests.append(request)
        n = len(request.prompt_ids)
        if request.json_schema is None:  # the turn: two tokens of text, then the opening marker
            usage = Usage(prompt_tokens=n, cached_tokens=n - 3, prefill_tokens_computed=3, generated_tokens=3)
            return LLMResponse(token_ids=[5, 6, self.OPEN], text="", finish_reason="stop", usage=usage)
        # the call's JSON: everything up to the marker is cached except the last generated token
        usage = Usage(prompt_tokens=n, cached_tokens=n - 1, prefill_tokens_computed=1, generated_tokens=4)
        return LLMResponse(token_ids=[8, 9, 10, 11], text="", finish_reason="stop", usage=usage)


@graph
async def one_call(ctx: Any) -> dict[str, int]:
    gen = await ctx.generate("look it up", max_tokens=8, tools=[slow_echo])
    return {"prompt": gen.usage.prompt_tokens, "cached": gen.usage.cached_tokens, "computed": gen.usage.prefill_tokens_computed,
            "generated": gen.usage.generated_tokens, "sent": len(gen.token_ids)}


async def test_a_tool_call_completed_in_a_second_request_counts_its_prompt_once() -> None:
    engine = MarkerEngine()
    reg = Registry()
    for obj in (slow_echo, one_call):
        reg.register(obj)
    res = await Runtime(reg, engine, limits=PoolLimits(cpu=8, gpu=4)).run_job(JobSpec(graph="one_call", inputs={}))  # type: ignore[arg-type]
    assert res.status == "succeeded", res.error
    first, second = engine.requests
    assert second.prompt_ids[: len(first.prompt_ids) + 3] == first.prompt_ids + [5, 6, MarkerEngine.OPEN]
    # the default model's marker has no text between it and the JSON: the second request adds no prompt
    assert res.output["prompt"] == len(first.prompt_ids) == len(second.prompt_ids) - 3
    assert res.output["cached"] == len(first.prompt_ids) - 3  # the first request's hits; the re-read is not a new prompt
    assert res.output["computed"] == 3 + 1 and res.output["generated"] == 3 + 4  # engine work of both requests
