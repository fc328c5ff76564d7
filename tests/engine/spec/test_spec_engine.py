"""Speculative decoding inside the engine: lossless greedy output, correct KV after rejections."""

from __future__ import annotations

from pathlib import Path

import torch

from engine import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=48, ignore_eos=True)


def _prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(3)
    motif = torch.randint(2, 128, (6,), generator=g).tolist()
    return [motif * 4 + [9, 9], torch.randint(2, 128, (20,), generator=g).tolist(), (motif + [5]) * 3]


def test_greedy_output_with_ngram_speculation_equals_plain_decoding(tiny_qwen: Path) -> None:
    opts = dict(device="cpu", dtype="float32", block_size=4, num_kv_blocks=256)
    plain = LLM(tiny_qwen, **opts).generate(_prompts(), GREEDY)  # type: ignore[arg-type]
    spec_llm = LLM(tiny_qwen, speculative="ngram", num_speculative_tokens=3, **opts)  # type: ignore[arg-type]
    spec = spec_llm.generate(_prompts(), GREEDY)
    assert [o.token_ids for o in spec] == [o.token_ids for o in plain]
    proposed = sum(o.usage.spec_proposed_tokens for o in spec)
    accepted = sum(o.usage.spec_accepted_tokens for o in spec)
    assert proposed > 0 and 0 < accepted <= proposed


def test_kv_after_rejections_equals_the_kv_of_plain_decoding(tiny_qwen: Path) -> None:
    opts = dict(device="cpu", dtype="float32", block_size=4, num_kv_blocks=256)
    prompt = _prompts()[0]
    a = LLM(tiny_qwen, **opts)  # type: ignore[arg-type]
    b = LLM(tiny_qwen, speculative="ngram", num_speculative_tokens=4, **opts)  # type: ignore[arg-type]
    out_a = a.generate([prompt], GREEDY)[0]
    out_b = b.generate([prompt], GREEDY)[0]
    assert out_a.token_ids == out_b.token_ids and out_b.usage.spec_accepted_tokens < out_b.usage.spec_proposed_tokens
    tokens = prompt + out_a.token_ids
    ma = a.core.scheduler.radix.match_prefix(tokens, count=False)  # type: ignore[union-attr]
    mb = b.core.scheduler.radix.match_prefix(tokens, count=False)  # type: ignore[union-attr]
    assert ma.num_tokens == mb.num_tokens >= len(prompt)
    ka = a.core.runner.kv_cache.k[:, ma.block_ids]
    kb = b.core.runner.kv_cache.k[:, mb.block_ids]
    torch.testing.assert_close(ka, kb, atol=1e-5, rtol=1e-5)


def test_stop_tokens_inside_accepted_drafts_end_the_request_there(tiny_qwen: Path) -> None:
    opts = dict(device="cpu", dtype="float32", block_size=4, num_kv_blocks=256)
    prompt = _prompts()[2]
    full = LLM(tiny_qwen, **opts).generate([prompt], GREEDY)[0].token_ids  # type: ignore[arg-type]
    stop = full[10]
    params = SamplingParams(temperature=0.0, max_tokens=48, stop_token_ids=(stop,), ignore_eos=True)
    spec = LLM(tiny_qwen, speculative="ngram", **opts).generate([prompt], params)[0]  # type: ignore[arg-type]
    assert spec.token_ids == full[: full.index(stop) + 1]
    short = LLM(tiny_qwen, speculative="ngram", **opts).generate([prompt], SamplingParams(temperature=0.0, max_tokens=7, ignore_eos=True))[0]  # type: ignore[arg-type]
    assert short.token_ids == full[:7]
