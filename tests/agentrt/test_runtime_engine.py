"""The runtime on the real embedded model: KV reuse across turns, structured output, the graphs."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from agentrt import EmbeddedEngine, JobSpec, Registry, Runtime, graph
from agentrt.schemas import parse_json_output
from engine import LLM


@pytest.fixture(scope="module")
def engine() -> EmbeddedEngine:
    return EmbeddedEngine(LLM(kv_cache_memory_gb=0.25))


def runtime(engine: EmbeddedEngine, *objs: Any) -> Runtime:
    reg = Registry()
    reg.load_path("tools")
    reg.load_path("graphs")
    for o in objs:
        reg.register(o)
    return Runtime(reg, engine)


@graph
async def two_turns(ctx: Any) -> list[dict[str, int]]:
    out = []
    for msgs in ([{"role": "system", "content": "# Airline Agent Policy"}, {"role": "user", "content": "Hi, I need help with a booking."}],
                 [{"role": "user", "content": "My user id is mia_li_3668."}]):
        gen = await ctx.generate(msgs, max_tokens=24)
        out.append({"prompt": gen.usage.prompt_tokens, "cached": gen.usage.cached_tokens, "computed": gen.usage.prefill_tokens_computed,
                    "generated": gen.usage.generated_tokens})
    return out


class Booking(msgspec.Struct):
    user_id: str
    reservation_id: str
    passengers: int


@graph
async def structured(ctx: Any, temperature: float) -> dict[str, Any]:
    gen = await ctx.generate("Give the booking as JSON.", schema=Booking, max_tokens=256, temperature=temperature)
    return msgspec.to_builtins(parse_json_output(gen, Booking))


async def test_second_turn_of_a_session_prefills_only_its_new_tokens(engine: EmbeddedEngine) -> None:
    res = await runtime(engine, two_turns).run_job(JobSpec(graph="two_turns"))
    first, second = res.output
    new_tokens = second["prompt"] - first["prompt"]
    assert second["cached"] >= first["prompt"] - 16  # the previous turn, page-aligned, came from the cache
    assert second["computed"] <= new_tokens + 16  # only the new turn (plus < 1 page) was computed
    assert second["computed"] < second["prompt"] / 2


@pytest.mark.parametrize("temperature", [0.0, 1.0])
async def test_structured_output_always_parses(engine: EmbeddedEngine, temperature: float) -> None:
    rt = runtime(engine, structured)
    for _ in range(2):
        res = await rt.run_job(JobSpec(graph="structured", inputs={"temperature": temperature}))
        assert res.status == "succeeded", res.error
        assert set(res.output) == {"user_id", "reservation_id", "passengers"}


async def test_airline_graph_runs_on_the_synthetic_database(engine: EmbeddedEngine) -> None:
    rt = runtime(engine)
    res = await rt.run_job(JobSpec(graph="airline_support", inputs={"user_turns": ["Hi, cancel my trip please.", "My user id is liam_kim_1003."], "database": "synthetic", "max_tokens": 48, "confirm": False}))
    assert res.status == "succeeded", res.error
    assert len(res.output["turns"]) >= 1 and res.usage.generated_tokens > 0
    for turn in res.output["turns"]:
        for call in turn["tool_calls"]:
            assert call["name"] in rt.registry.tools  # tool calls are grammar-constrained


async def test_plan_execute_fans_out_to_workers_and_reduces(engine: EmbeddedEngine) -> None:
    rt = runtime(engine)
    res = await rt.run_job(JobSpec(graph="plan_execute", inputs={"request": "Change my flight and add a bag.", "num_workers": 2, "database": "synthetic", "max_tokens": 32}))
    assert res.status == "succeeded", res.error
    dag = rt.jobs[res.job_id].dag
    names = [t.name for t in dag.tasks.values()]
    assert names[0] == "planner" and names[-1] == "reducer" and 1 <= names.count("worker") <= 2
    assert len(res.output["workers"]) == len(res.output["plan"])


@graph
async def one_turn(ctx: Any, n: int) -> int:
    gen = await ctx.generate(f"Flight number {n}, please check it.", max_tokens=4)
    return gen.usage.prompt_tokens


async def test_queued_llm_calls_announce_their_prefixes_to_the_engine(engine: EmbeddedEngine) -> None:
    import asyncio

    from agentrt.scheduler import PoolLimits, ServingPolicy

    calls: list[tuple[str, str, float]] = []

    class Recording(EmbeddedEngine):
        def hint(self, key: str, token_ids: list[int], steps: float) -> None:
            calls.append(("hint", key, steps))
            super().hint(key, token_ids, steps)

        def unhint(self, key: str) -> None:
            calls.append(("unhint", key, 0.0))
            super().unhint(key)

    rec = Recording(engine.llm)
    reg = Registry()
    reg.register(one_turn)
    rt = Runtime(reg, rec, limits=PoolLimits(gpu=1), serving=ServingPolicy(graph_hints=True))  # one LLM call at a time: the others queue
    results = await asyncio.gather(*[rt.run_job(JobSpec(graph="one_turn", inputs={"n": i})) for i in range(4)])
    assert all(r.status == "succeeded" for r in results)
    hinted = {key for kind, key, _ in calls if kind == "hint"}
    assert len(hinted) == 4 and hinted == {key for kind, key, _ in calls if kind == "unhint"}
    assert any(kind == "hint" and steps >= 1 for kind, _, steps in calls)  # someone waited behind another
    assert any(kind == "hint" and steps == 0 for kind, _, steps in calls)  # and was re-announced as next
    assert rt.prefix_hints == {}
    engine.llm.core.step()
    assert engine.llm.core.hints == {}


@graph
async def service_probe(ctx: Any) -> dict[str, float]:
    gen = await ctx.generate("Hi, I need help with a booking.", max_tokens=8)
    service = ctx.runtime.scheduler.attained_service(ctx.job_id)
    await ctx.generate("My user id is mia_li_3668.", max_tokens=4)
    return {"service": service, "work": gen.usage.prefill_tokens_computed + gen.usage.generated_tokens}


def recording_runtime(engine: EmbeddedEngine, **kwargs: Any) -> tuple[Runtime, list[Any]]:
    """A runtime running `service_probe` whose engine client records every LLMRequest it sends."""
    from agentrt.engine_client import LLMRequest, LLMResponse

    seen: list[LLMRequest] = []

    class Recording(EmbeddedEngine):
        async def generate(self, request: LLMRequest) -> LLMResponse:
            seen.append(request)
            return await super().generate(request)

    reg = Registry()
    reg.register(service_probe)
    return Runtime(reg, Recording(engine.llm), **kwargs), seen


async def test_llm_requests_carry_their_jobs_attained_engine_work_as_priority(engine: EmbeddedEngine) -> None:
    from agentrt.scheduler import las_level

    rt, seen = recording_runtime(engine, policy="las")
    res = await rt.run_job(JobSpec(graph="service_probe", job_id="prio-job"))
    assert res.status == "succeeded", res.error
    first, second = seen
    assert first.priority == 0 and first.program_id == second.program_id == "prio-job"
    assert res.output["service"] == res.output["work"] > 0  # engine work (tokens), not seconds
    assert second.priority == las_level(res.output["service"])


async def test_without_engine_priority_requests_name_no_program(engine: EmbeddedEngine) -> None:
    # The "vllm-like" baseline: the engine sees anonymous requests, first come first served per request.
    from agentrt.scheduler import ServingPolicy

    rt, seen = recording_runtime(engine, serving=ServingPolicy(engine_priority=False))
    res = await rt.run_job(JobSpec(graph="service_probe", job_id="anon-job"))
    assert res.status == "succeeded", res.error
    assert [(r.priority, r.program_id) for r in seen] == [(0, None), (0, None)]


@graph
async def ask_between_turns(ctx: Any) -> list[str]:
    first = await ctx.generate("Say hello to the customer.", max_tokens=8)
    reply = await ctx.interrupt({"question": "what does the customer say?"})
    second = await ctx.generate(reply, max_tokens=8)
    return [first.text, second.text]


async def test_a_resumed_job_replays_its_llm_calls_and_continues_the_same_conversation(engine: EmbeddedEngine) -> None:
    calls: list[int] = []

    class Counting(EmbeddedEngine):
        async def generate(self, request: Any) -> Any:
            calls.append(len(request.prompt_ids))
            return await super().generate(request)

    reg = Registry()
    reg.register(ask_between_turns)
    rt = Runtime(reg, Counting(engine.llm))
    asked = await rt.run_job(JobSpec(graph="ask_between_turns"))
    assert asked.status == "interrupted" and len(calls) == 1
    first_turn = rt.jobs[asked.job_id].sessions[0].messages[1]
    done = await rt.resume(asked.job_id, "My user id is mia_li_3668.")
    assert done.status == "succeeded", done.error
    assert len(calls) == 2  # the first generation came from the record, not the model
    assert calls[1] > calls[0]  # the second turn's prompt holds the replayed first turn
    session = rt.jobs[done.job_id].sessions[0]
    assert [m["role"] for m in session.messages] == ["user", "assistant", "user", "assistant"]
    assert session.messages[1] == first_turn  # the replayed turn joins the conversation exactly as generated


async def test_llm_tokens_stream_per_step_and_add_up_to_the_output(engine: EmbeddedEngine) -> None:
    reg = Registry()
    reg.register(one_turn)
    rt = Runtime(reg, engine)
    events = [e async for e in rt.stream_job(JobSpec(graph="one_turn", inputs={"n": 7}))]
    tokens = [e for e in events if e["kind"] == "llm_token"]
    output = next(e for e in events if e["kind"] == "llm_output")
    assert tokens and all(e["task_id"] == output["task_id"] and e["parent_task_id"] is None for e in tokens)
    assert sum(e["tokens"] for e in tokens) >= len(tokens)
    assert "".join(e["text"] for e in tokens).startswith(output["text"].removesuffix("<|end|>"))
    assert events.index(tokens[-1]) < events.index(output)


@graph
async def gathered(ctx: Any) -> dict[str, Any]:
    await ctx.generate("My name is Ada.", max_tokens=4)
    a, b = await ctx.gather(ctx.generate("Question A: where is my bag?", max_tokens=4),
                            ctx.generate("Question B: when do we board?", max_tokens=4))
    after = await ctx.generate("Thanks.", max_tokens=4)
    return {"a": a.usage.prompt_tokens, "b": b.usage.prompt_tokens, "after": after.usage.prompt_tokens}


async def test_gathered_generates_on_one_session_fork_it_at_the_call(engine: EmbeddedEngine) -> None:
    reg = Registry()
    reg.register(gathered)
    rt = Runtime(reg, engine)
    res = await rt.run_job(JobSpec(graph="gathered"))
    assert res.status == "succeeded", res.error
    main, fork = rt.jobs[res.job_id].sessions
    contents = [[m["content"] for m in s.messages if m["role"] == "user"] for s in (main, fork)]
    assert contents[0] == ["My name is Ada.", "Question A: where is my bag?", "Thanks."]  # the first call keeps the session
    assert contents[1] == ["My name is Ada.", "Question B: when do we board?"]  # the other saw the conversation up to the fork
    assert abs(res.output["a"] - res.output["b"]) <= 3  # neither prompt holds the other's question


@graph
async def chat_turn(ctx: Any, text: str) -> int:
    gen = await ctx.generate(text, max_tokens=4)
    return gen.usage.cached_tokens


async def test_a_thread_continues_its_conversation_across_jobs_and_restarts(engine: EmbeddedEngine, tmp_path: Any) -> None:
    from agentrt.journal import Journal

    reg = Registry()
    reg.register(chat_turn)
    journal = Journal(tmp_path / "j.sqlite")
    rt = Runtime(reg, engine, store=journal)
    intro = "My name is Ada. " + "I am flying from Boston to Seattle next week with my two children and a dog. " * 4
    first = await rt.run_job(JobSpec(graph="chat_turn", inputs={"text": intro}, thread_id="t1"))
    second = await rt.run_job(JobSpec(graph="chat_turn", inputs={"text": "What is my name?"}, thread_id="t1"))
    other = await rt.run_job(JobSpec(graph="chat_turn", inputs={"text": "What is my name?"}, thread_id="t2"))
    assert first.status == second.status == other.status == "succeeded"
    assert second.usage.prompt_tokens > first.usage.prompt_tokens > other.usage.prompt_tokens  # it holds the first turn
    assert second.output > other.output  # the thread's earlier turn came from the KV cache
    journal.close()
    journal = Journal(tmp_path / "j.sqlite")  # a restarted server on the same journal
    rt = Runtime(reg, engine, store=journal)
    third = await rt.run_job(JobSpec(graph="chat_turn", inputs={"text": "Bye."}, thread_id="t1"))
    users = [m["content"] for m in rt.jobs[third.job_id].sessions[0].messages if m["role"] == "user"]
    assert users == [intro, "What is my name?", "Bye."]
    journal.close()


@pytest.mark.parametrize("name", ["structured_output", "sessions", "tool_loop", "interrupts", "threads", "streaming"])
async def test_each_example_runs_to_success(engine: EmbeddedEngine, name: str) -> None:
    import importlib

    module = importlib.import_module(f"examples.{name}")
    result = await module.main(engine)
    assert result.status == "succeeded", result.error
