"""Preemption and speculative decoding give each new family's requests the tokens they get alone."""

from __future__ import annotations

import pytest
import torch

from engine import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)


@pytest.mark.parametrize("arch", ["tiny_qwen3", "tiny_gpt_oss", "tiny_deepseek"])
def test_preempted_and_speculated_runs_equal_each_request_alone(arch: str, request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue(arch)
    g = torch.Generator().manual_seed(2)
    motif = torch.randint(2, 97, (6,), generator=g).tolist()
    prompts = [motif * 3 + torch.randint(2, 97, (int(n),), generator=g).tolist() for n in (3, 9, 14, 5)]

    def llm(**kw: object) -> LLM:
        return LLM(path, device="cpu", dtype="float32", block_size=4, **kw)  # type: ignore[arg-type]

    lone = llm(num_kv_blocks=128, enable_prefix_caching=False)
    alone = [lone.generate([p], GREEDY)[0].token_ids for p in prompts]
    tight = llm(num_kv_blocks=24, max_num_batched_tokens=12)  # forces preemption and chunked prefill
    seqs = [tight.core.add(p, GREEDY) for p in prompts]
    while not all(s.is_finished for s in seqs):
        tight.core.step()
    assert [s.output_token_ids for s in seqs] == alone
    assert tight.core.scheduler.num_preemptions > 0
    spec = llm(num_kv_blocks=128, speculative="ngram", num_speculative_tokens=3)
    assert [o.token_ids for o in spec.generate(prompts, GREEDY)] == alone
