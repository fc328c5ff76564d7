"""Prefix KV export/import between two engines, and the block-event feed."""

from __future__ import annotations

import pytest

from engine import LLM, SamplingParams
from engine.errors import InvalidRequestError
from engine.kv.tiers import block_keys
from engine.kv.transfer import (
    PrefixKV,
    all_cached_blocks,
    cached_blocks,
    export_prefix,
    import_prefix,
    watch_evictions,
)

GREEDY = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
PROMPT = list(range(20, 58))  # 38 tokens: 9 whole blocks of 4 and a partial one


def _llm(**kw: object) -> LLM:
    return LLM(device="cpu", dtype="float32", num_kv_blocks=kw.pop("num_kv_blocks", 48), block_size=4, **kw)  # type: ignore[arg-type]


def test_imported_prefix_is_reused_and_decodes_exactly_like_one_engine() -> None:
    prefill, decode, alone = _llm(), _llm(), _llm()
    prefill.generate(PROMPT, SamplingParams(temperature=0.0, max_tokens=1))
    kv = export_prefix(prefill, PROMPT)
    assert kv.num_blocks == len(PROMPT) // 4 and kv.token_ids == PROMPT[: kv.num_blocks * 4]
    assert import_prefix(decode, kv) == kv.num_blocks
    assert import_prefix(decode, kv) == 0  # already cached: nothing written twice
    out = decode.generate(PROMPT, GREEDY)[0]
    assert out.usage.cached_tokens == kv.num_blocks * 4
    assert out.token_ids == alone.generate(PROMPT, GREEDY)[0].token_ids
    assert cached_blocks(decode, PROMPT) == block_keys(PROMPT, 4)
    branch = PROMPT[:8] + [7] * 8  # shares two blocks, then forks the tree (the last token has no KV)
    decode.generate(branch, SamplingParams(temperature=0.0, max_tokens=1))
    assert set(all_cached_blocks(decode)) == set(block_keys((PROMPT + out.token_ids)[:-1], 4)) | set(block_keys(branch, 4))


def test_evicted_blocks_are_reported_by_their_hashes() -> None:
    llm = _llm(num_kv_blocks=12)
    removed: list[bytes] = []
    watch_evictions(llm, removed.extend)
    llm.generate(PROMPT, SamplingParams(temperature=0.0, max_tokens=1))
    stored = cached_blocks(llm, PROMPT)
    other = list(range(100, 138))
    llm.generate(other, SamplingParams(temperature=0.0, max_tokens=1))
    assert removed and set(removed) <= set(stored)
    assert set(cached_blocks(llm, PROMPT)) == set(stored) - set(removed)


def test_a_prefix_with_another_block_size_is_refused() -> None:
    llm = _llm()
    kv = export_prefix(llm, PROMPT)  # nothing cached yet: empty
    assert kv.num_blocks == 0
    with pytest.raises(InvalidRequestError, match="block_size 8"):
        import_prefix(llm, PrefixKV(kv.token_ids, 8, kv.k, kv.v))
