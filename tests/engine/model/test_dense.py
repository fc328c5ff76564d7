"""Dense Qwen3 / Llama: logits and greedy tokens equal transformers'; the serving features
(prefix caching, chunked prefill, batching) do not change a request's tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine import LLM, SamplingParams
from engine.model.loader import load_model

ARCHS = ["tiny_qwen3", "tiny_llama"]
GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)


def _prompts(n: int, seed: int, lo: int = 3, hi: int = 40) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, 97, (int(k),), generator=g).tolist() for k in torch.randint(lo, hi, (n,), generator=g)]


def _llm(path: Path, **kw: object) -> LLM:
    opts: dict[str, object] = dict(device="cpu", dtype="float32", block_size=4, num_kv_blocks=256)
    opts.update(kw)
    return LLM(path, **opts)  # type: ignore[arg-type]


@pytest.mark.parametrize("arch", ARCHS)
def test_fp32_logits_match_transformers(arch: str, request: pytest.FixtureRequest) -> None:
    import transformers

    path = request.getfixturevalue(arch)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ours, cfg = load_model(path)
    assert cfg.num_experts == 0 and not any(cfg.is_sparse(i) for i in range(cfg.num_layers))
    ids = torch.tensor(_prompts(2, seed=4, lo=150, hi=151))  # past llama3's original 32 positions
    with torch.no_grad():
        ref = hf(ids).logits
        got = ours.compute_logits(ours.forward_dense(ids))
    assert (ref - got).abs().max().item() <= 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_generation_equals_transformers_generate(arch: str, request: pytest.FixtureRequest) -> None:
    import transformers

    path = request.getfixturevalue(arch)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompts = _prompts(3, seed=1)
    outs = _llm(path).generate(prompts, GREEDY)
    for prompt, out in zip(prompts, outs, strict=True):
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=24, min_new_tokens=24, do_sample=False,
                          pad_token_id=0)[0, len(prompt):].tolist()
        assert out.token_ids == ref


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_chunked_prefix_cached_runs_equal_each_request_alone(arch: str, request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue(arch)
    shared = _prompts(1, seed=7, lo=30, hi=31)[0]
    prompts = [shared + tail for tail in _prompts(4, seed=3, lo=2, hi=10)] + _prompts(2, seed=5)
    lone = _llm(path, enable_prefix_caching=False)
    alone = [lone.generate([p], GREEDY)[0].token_ids for p in prompts]
    llm = _llm(path, max_num_batched_tokens=16)  # chunked prefill
    first = llm.generate(prompts[:1], GREEDY)  # caches the shared prefix
    rest = llm.generate(prompts[1:], GREEDY)  # batched, prefix hits
    assert [o.token_ids for o in first + rest] == alone
    assert sum(o.usage.cached_tokens for o in rest) >= 3 * 28
