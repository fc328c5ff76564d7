"""Dense Qwen3 / Llama: logits and greedy tokens equal transformers'; the serving features
(prefix caching, chunked prefill, batching) do not change a request's tokens."""

from __future__ import annotations

import pytest
import torch
from tiny_models import cpu_llm, hf_greedy, random_prompts

from engine import SamplingParams
from engine.model.loader import load_model

ARCHS = ["tiny_qwen3", "tiny_llama"]
GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)


@pytest.mark.parametrize("arch", ARCHS)
def test_fp32_logits_match_transformers(arch: str, request: pytest.FixtureRequest) -> None:
    import transformers

    path = request.getfixturevalue(arch)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ours, cfg = load_model(path)
    assert cfg.num_experts == 0 and not any(cfg.is_sparse(i) for i in range(cfg.num_layers))
    ids = torch.tensor(random_prompts(2, seed=4, lo=150, hi=151))  # past llama3's original 32 positions
    with torch.no_grad():
        ref = hf(ids).logits
        got = ours.compute_logits(ours.forward_dense(ids))
    assert (ref - got).abs().max().item() <= 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_generation_equals_transformers_generate(arch: str, request: pytest.FixtureRequest) -> None:
    import transformers

    path = request.getfixturevalue(arch)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompts = random_prompts(3, seed=1)
    outs = cpu_llm(path).generate(prompts, GREEDY)
    for prompt, out in zip(prompts, outs, strict=True):
        assert out.token_ids == hf_greedy(hf, prompt, 24)


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_chunked_prefix_cached_runs_equal_each_request_alone(arch: str, request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue(arch)
    shared = random_prompts(1, seed=7, lo=30, hi=31)[0]
    prompts = [shared + tail for tail in random_prompts(4, seed=3, lo=2, hi=10)] + random_prompts(2, seed=5)
    lone = cpu_llm(path, enable_prefix_caching=False)
    alone = [lone.generate([p], GREEDY)[0].token_ids for p in prompts]
    llm = cpu_llm(path, max_num_batched_tokens=16)  # chunked prefill
    first = llm.generate(prompts[:1], GREEDY)  # caches the shared prefix
    rest = llm.generate(prompts[1:], GREEDY)  # batched, prefix hits
    assert [o.token_ids for o in first + rest] == alone
    assert sum(o.usage.cached_tokens for o in rest) >= 3 * 28
