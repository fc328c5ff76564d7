"""The engine on CUDA (marked gpu: skipped without a CUDA device)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import LLM, SamplingParams

pytestmark = pytest.mark.gpu
GREEDY = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)


def test_cuda_fp32_greedy_equals_cpu_fp32(tiny_qwen: Path) -> None:
    prompts = [[5, 6, 7, 8, 9] * 5, [3, 4] * 9, list(range(2, 40))]
    cpu = [o.token_ids for o in LLM(tiny_qwen, device="cpu", dtype="float32", num_kv_blocks=128, block_size=4).generate(prompts, GREEDY)]
    gpu = [o.token_ids for o in LLM(tiny_qwen, device="cuda", dtype="float32", num_kv_blocks=128, block_size=4).generate(prompts, GREEDY)]
    assert gpu == cpu


def test_cuda_bf16_default_model_generates_and_caches_prefixes() -> None:
    llm = LLM(device="cuda")
    assert str(llm.dtype) == "torch.bfloat16"
    prefix = list(range(100, 400))
    first = llm.generate([prefix + [7]], GREEDY)[0]
    second = llm.generate([prefix + [8]], GREEDY)[0]
    assert len(first.token_ids) == 32 and second.usage.cached_tokens >= 288
