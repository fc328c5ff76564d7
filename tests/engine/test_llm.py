"""End-to-end engine behaviour on tiny random checkpoints: parity with transformers, batching
invariance, prefix caching, preemption, streaming and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine import LLM, FinishReason, InvalidRequestError, SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True)


def _prompts(n: int, seed: int = 1, lo: int = 3, hi: int = 40) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(lo, hi, (n,), generator=g).tolist()
    return [torch.randint(2, 128, (n_,), generator=g).tolist() for n_ in lens]


def _llm(path: Path, **kw: object) -> LLM:
    opts: dict[str, object] = dict(device="cpu", dtype="float32", block_size=4, num_kv_blocks=512)
    opts.update(kw)
    return LLM(path, **opts)  # type: ignore[arg-type]


@pytest.mark.parametrize("arch", ["tiny_qwen", "tiny_mixtral"])
def test_greedy_generation_equals_transformers_generate(arch: str, request: pytest.FixtureRequest) -> None:
    import transformers

    path = request.getfixturevalue(arch)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    llm = _llm(path)
    prompts = _prompts(3)
    outs = llm.generate(prompts, GREEDY)
    for prompt, out in zip(prompts, outs, strict=True):
        ref = hf.generate(
            torch.tensor([prompt]), max_new_tokens=64, min_new_tokens=64, do_sample=False, pad_token_id=0
        )[0, len(prompt) :].tolist()
        assert out.token_ids == ref


def test_batched_prefix_cached_preempted_runs_equal_each_request_alone(tiny_qwen: Path) -> None:
    shared = _prompts(1, seed=7, lo=30, hi=31)[0]
    prompts = [shared + tail for tail in _prompts(6, seed=3, lo=2, hi=12)] + _prompts(4, seed=5)
    alone = [_llm(tiny_qwen, enable_prefix_caching=False).generate([p], GREEDY)[0].token_ids for p in prompts]
    # A small cache (60 blocks of 4 tokens) forces preemption; a small token budget forces chunked prefill.
    llm = _llm(tiny_qwen, num_kv_blocks=60, max_num_batched_tokens=24)
    seqs = [llm.core.add(p, GREEDY) for p in prompts[:3]]
    pending = list(prompts[3:])
    while not all(s.is_finished for s in seqs) or pending:
        llm.core.step()
        if pending:  # continuous batching: a new request joins between steps
            seqs.append(llm.core.add(pending.pop(0), GREEDY))
    assert [s.output_token_ids for s in seqs] == alone
    assert llm.core.scheduler.num_preemptions > 0
    assert sum(s.usage.cached_tokens for s in seqs) > 0
    for s in seqs:  # usage adds up per request even when it was preempted and re-admitted
        assert s.usage.cached_tokens + s.usage.prefill_tokens_computed == s.usage.prompt_tokens
    assert sum(s.usage.recomputed_tokens for s in seqs) > 0
    pool = llm.core.scheduler.pool
    llm.core.scheduler.radix.evict(pool.num_blocks)  # type: ignore[union-attr]
    assert pool.num_free_blocks == pool.num_blocks  # every reference was returned


def test_shared_prefix_computes_only_the_suffix(tiny_qwen: Path) -> None:
    llm = _llm(tiny_qwen)
    prefix = _prompts(1, seed=11, lo=33, hi=34)[0]
    first = llm.generate([prefix + [5, 6, 7]], GREEDY)[0]
    second = llm.generate([prefix + [9, 9]], GREEDY)[0]
    assert first.usage.cached_tokens == 0
    assert second.usage.cached_tokens == 32  # page-aligned: 8 blocks of 4 tokens
    assert second.usage.prefill_tokens_computed == len(prefix) + 2 - 32


def test_seeded_sampling_does_not_depend_on_the_batch(tiny_qwen: Path) -> None:
    llm = _llm(tiny_qwen)
    params = SamplingParams(temperature=0.8, top_k=20, top_p=0.9, max_tokens=16, seed=123, ignore_eos=True)
    prompt = _prompts(1, seed=2)[0]
    alone = llm.generate([prompt], params)[0].token_ids
    crowd = llm.generate([prompt, *_prompts(3, seed=4)], [params] + [SamplingParams(temperature=1.0, max_tokens=16)] * 3)
    assert crowd[0].token_ids == alone


def test_stop_token_and_max_tokens_finish_requests(tiny_qwen: Path) -> None:
    llm = _llm(tiny_qwen)
    prompt = _prompts(1, seed=9)[0]
    full = llm.generate([prompt], GREEDY)[0].token_ids
    stop_at = full[5]
    out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=64, stop_token_ids=(stop_at,), ignore_eos=True))[0]
    assert out.finish_reason is FinishReason.STOP
    assert out.token_ids == full[: full.index(stop_at) + 1]
    short = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))[0]
    assert short.finish_reason is FinishReason.LENGTH and len(short.token_ids) == 3


@pytest.mark.parametrize(
    ("prompt", "params", "match"),
    [
        ([], GREEDY, "empty"),
        ([5] * 600, GREEDY, "context length"),
        ([5, 128], GREEDY, "outside the vocabulary"),
        ([5, -1], GREEDY, "outside the vocabulary"),
    ],
)
def test_bad_requests_raise_value_error_and_engine_keeps_serving(
    tiny_qwen: Path, prompt: list[int], params: SamplingParams, match: str
) -> None:
    llm = _llm(tiny_qwen)
    running = llm.core.add(_prompts(1)[0], GREEDY)
    with pytest.raises(ValueError, match=match):
        llm.generate([prompt], params)
    while not running.is_finished:
        llm.core.step()
    assert running.num_output_tokens == 64


@pytest.mark.parametrize(
    "kwargs", [dict(temperature=-1.0), dict(top_p=0.0), dict(top_k=0), dict(max_tokens=0), dict(temperature=float("nan"))]
)
def test_invalid_sampling_params_raise_value_error(kwargs: dict[str, float]) -> None:
    with pytest.raises(InvalidRequestError):
        SamplingParams(**kwargs)  # type: ignore[arg-type]


async def test_stream_yields_the_same_tokens_as_generate(tiny_qwen: Path) -> None:
    llm = _llm(tiny_qwen)
    prompt = _prompts(1, seed=21)[0]
    expected = llm.generate([prompt], GREEDY)[0].token_ids
    chunks = []
    async for out in llm.stream(prompt, GREEDY):
        chunks.extend(out.delta_token_ids)
    assert chunks == expected
    assert out.finished and out.usage.generated_tokens == 64
    llm.close()


async def test_abandoned_stream_aborts_and_frees_kv(tiny_qwen: Path) -> None:
    llm = _llm(tiny_qwen, enable_prefix_caching=False)
    async for out in llm.stream(_prompts(1)[0], GREEDY):
        if len(out.token_ids) >= 3:
            break
    import anyio

    with anyio.fail_after(5):
        while llm.core.has_unfinished():
            await anyio.sleep(0.01)
    assert llm.core.scheduler.pool.num_free_blocks == llm.core.scheduler.pool.num_blocks
    llm.close()
