"""The engine keeps serving through bad requests and failing steps (issue 18 item 5)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from engine import LLM, InvalidRequestError, SamplingParams
from engine.errors import RequestFailedError

GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(tiny_qwen: Path) -> LLM:
    return LLM(tiny_qwen, device="cpu", dtype="float32", block_size=4, num_kv_blocks=256)


@pytest.mark.parametrize(("prompts", "params", "match"), [
    ([[5, 6]], SamplingParams(stop=[1]), r"stop must be a list of strings, got 1"),  # type: ignore[list-item]
    ([[5, 6]], SamplingParams(max_tokens=10**6), r"max_tokens=1000000 .* context length 512; at most 510"),
    ({"a": 1, "b": 2}, None, r"got dict"),
    ([[5, "6"]], None, r"token id must be an int, got '6'"),
    ([[5, True]], None, r"token id must be an int, got True"),
    ([{"a": 1}], None, r"a prompt is a str or a list of token ids, got dict"),
    ([[5, 6]], "greedy", r"params must be SamplingParams, got str"),
])
def test_bad_arguments_raise_invalid_request_naming_the_value(llm: LLM, prompts: Any, params: Any, match: str) -> None:
    with pytest.raises(InvalidRequestError, match=match):
        llm.generate(prompts, params)
    assert not llm.core.has_unfinished()


async def test_a_bad_stream_request_raises_instead_of_hanging(llm: LLM) -> None:
    with pytest.raises(InvalidRequestError, match="max_tokens"):
        async for _ in llm.stream([5, 6, 7], SamplingParams(max_tokens=10**6)):
            pass


async def test_a_failing_step_fails_the_new_request_and_the_others_finish(llm: LLM, monkeypatch: pytest.MonkeyPatch) -> None:
    long = SamplingParams(temperature=0.0, max_tokens=300, ignore_eos=True)  # still running when the bad one comes
    expected = llm.generate([[9, 10, 11], [12, 13]], long)
    execute = llm.core.runner.execute

    def faulty(batch: Any) -> Any:  # a request starting with token 99 breaks every step it is in
        if any(seq.token_ids[0] == 99 for seq in batch.seqs):
            raise RuntimeError("injected kernel fault")
        return execute(batch)

    monkeypatch.setattr(llm.core.runner, "execute", faulty)

    async def collect(prompt: list[int], params: SamplingParams = long) -> list[int]:
        ids: list[int] = []
        async for out in llm.stream(prompt, params):
            ids.extend(out.delta_token_ids)
        return ids

    healthy = [asyncio.create_task(collect(p)) for p in ([9, 10, 11], [12, 13])]
    await asyncio.sleep(0.05)
    with pytest.raises(RequestFailedError, match="injected kernel fault"):
        await asyncio.wait_for(collect([99, 3, 4], GREEDY), 30)
    assert not any(t.done() for t in healthy)
    assert await asyncio.wait_for(asyncio.gather(*healthy), 30) == [o.token_ids for o in expected]


async def test_generate_beside_streams_loses_no_stream_output(llm: LLM) -> None:
    prompts = [[20 + i, 21 + i, 22 + i] for i in range(4)]
    expected = [o.token_ids for o in llm.generate(prompts, GREEDY)]

    async def collect(prompt: list[int]) -> list[int]:
        ids: list[int] = []
        async for out in llm.stream(prompt, GREEDY):
            ids.extend(out.delta_token_ids)
        return ids

    streams = [asyncio.create_task(collect(p)) for p in prompts]
    await asyncio.sleep(0)
    for _ in range(3):  # generate steps on this thread too, concurrently with the driver
        await asyncio.to_thread(llm.generate, [[40, 41]], GREEDY)
    assert await asyncio.wait_for(asyncio.gather(*streams), 60) == expected



def test_a_stop_token_outside_the_vocabulary_is_rejected_by_name(llm: LLM) -> None:
    vocab = llm.model_config.vocab_size
    with pytest.raises(InvalidRequestError, match=f"stop token id {vocab} is outside the vocabulary"):
        llm.generate([[1, 2]], SamplingParams(max_tokens=4, stop_token_ids=(5, vocab)))
    assert llm.generate([[1, 2]], SamplingParams(max_tokens=2, temperature=0))[0].token_ids  # and it still serves
