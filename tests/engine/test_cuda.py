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
    llm = LLM(tiny_qwen, device="cuda", dtype="float32", num_kv_blocks=128, block_size=4)
    gpu = [o.token_ids for o in llm.generate(prompts, GREEDY)]
    assert llm.core.runner.graphs is not None and llm.core.runner.graphs.replays > 0  # decode ran as CUDA graphs
    assert gpu == cpu


def test_cuda_bf16_default_model_generates_and_caches_prefixes() -> None:
    llm = LLM(device="cuda")
    assert str(llm.dtype) == "torch.bfloat16"
    prefix = list(range(100, 400))
    first = llm.generate([prefix + [7]], GREEDY)[0]
    second = llm.generate([prefix + [8]], GREEDY)[0]
    assert len(first.token_ids) == 32 and second.usage.cached_tokens >= 288


def test_cuda_graph_decode_equals_eager_decode() -> None:
    prompts = [list(range(10, 10 + n)) for n in (5, 40, 17)]  # 3 sequences: a padded graph of 4 rows
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    eager = LLM(device="cuda", cuda_graphs=False)
    graphed = LLM(device="cuda")
    assert eager.core.runner.graphs is None
    assert [o.token_ids for o in graphed.generate(prompts, params)] == [o.token_ids for o in eager.generate(prompts, params)]
    graphs = graphed.core.runner.graphs
    assert graphs is not None and not graphs.disabled and graphs.replays > 0 and (1, 4) in graphs.graphs


def test_cuda_graph_decode_with_fp4_experts_and_speculation() -> None:
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    prompt = [[7, 8, 9, 10] * 12]
    plain = LLM(device="cuda", quantization="nvfp4", cuda_graphs=False).generate(prompt, params)[0].token_ids
    llm = LLM(device="cuda", quantization="nvfp4", speculative="suffix")
    assert llm.generate(prompt, params)[0].token_ids == plain
