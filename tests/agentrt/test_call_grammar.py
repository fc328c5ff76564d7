"""The runtime constrains a gpt-oss model's tool calls in one pass with its chat format's
structural tag (harmony's calls are not split at an opening token as the default model's are)."""

from __future__ import annotations

from typing import Any

import pytest

from agentrt import EmbeddedEngine, JobSpec, Registry, Runtime, graph, tool
from agentrt.engine_client import LLMRequest, LLMResponse
from engine import LLM
from engine.chat.fixtures import FixtureMissingError, tiny_model

HEADS = ("<|channel|>analysis<|message|>", "<|channel|>commentary to=functions.pick_seat <|constrain|>json<|message|>",
         "<|channel|>final<|message|>")


@tool
def pick_seat(row: int, letter: str) -> str:
    """Pick a seat."""
    return f"{row}{letter}"


class Recording(EmbeddedEngine):
    """The embedded engine, keeping each request and its raw reply."""

    def __init__(self, llm: LLM) -> None:
        super().__init__(llm)
        self.seen: list[tuple[LLMRequest, LLMResponse]] = []

    async def generate(self, request: LLMRequest, on_tokens: Any = None) -> LLMResponse:
        out = await super().generate(request, on_tokens)
        self.seen.append((request, out))
        return out


@graph
async def seat(ctx: Any, temperature: float) -> dict[str, Any]:
    gen = await ctx.generate([{"role": "user", "content": "A window seat, please."}], tools=[pick_seat], max_tokens=160,
                             temperature=temperature)
    return {"calls": [(c.name, c.arguments) for c in gen.tool_calls], "errors": gen.tool_call_errors}


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Recording:
    try:
        path = tiny_model("gptoss", tmp_path_factory.mktemp("gptoss"))
    except FixtureMissingError as exc:
        pytest.fail(str(exc))
    return Recording(LLM(path, device="cpu", dtype="float32", num_kv_blocks=64))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
async def test_a_gpt_oss_turn_with_tools_follows_the_harmony_call_grammar(engine: Recording, temperature: float) -> None:
    reg = Registry()
    reg.register(pick_seat)
    reg.register(seat)
    res = await Runtime(reg, engine).run_job(JobSpec(graph="seat", inputs={"temperature": temperature}))
    assert res.status == "succeeded", res.error
    request, reply = engine.seen[-1]
    assert request.structural_tag is not None and request.json_schema is None
    text = engine.llm.decode(reply.token_ids)  # a random model, yet every reply takes one of harmony's forms
    assert text.startswith(HEADS), text
    assert not res.output["errors"]
    assert bool(res.output["calls"]) is text.startswith(HEADS[1])  # a call on the commentary channel parses into one
    for name, args in res.output["calls"]:
        assert name == "pick_seat" and list(args) == ["row", "letter"] and isinstance(args["row"], int), text
