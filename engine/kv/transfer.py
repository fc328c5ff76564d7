"""Moving prefix KV between engines, and the block-event feed a KV-aware router indexes.

`export_prefix` copies the KV of a prompt's cached page-aligned prefix out of an `LLM`;
`import_prefix` writes such blocks into another `LLM`'s pool and prefix tree, so a request with
that prompt prefills only what follows (disaggregated prefill/decode). Blocks are named by the
chained hashes of engine/kv/tiers.py (`block_keys`). `watch_evictions` reports blocks leaving the
device cache. All three take the engine's step lock: they never race a running step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from engine.errors import InvalidRequestError
from engine.kv.tiers import block_keys


@dataclass(slots=True)
class PrefixKV:
    """The KV of the first `len(token_ids) // block_size` blocks of a prompt."""

    token_ids: list[int]  # exactly num_blocks * block_size tokens
    block_size: int
    k: torch.Tensor  # [num_layers, num_blocks, block_size, num_kv_heads, head_dim] (CPU)
    v: torch.Tensor  # same shape as k

    @property
    def num_blocks(self) -> int:
        return int(self.k.shape[1])


def _radix(llm: Any) -> Any:
    radix = llm.core.scheduler.radix
    if radix is None:
        raise InvalidRequestError("KV transfer needs prefix caching (enable_prefix_caching=True)")
    return radix


def cached_blocks(llm: Any, token_ids: list[int]) -> list[bytes]:
    """Hashes of the leading blocks of `token_ids` that are in `llm`'s device cache now."""
    bs = llm.config.block_size
    with llm._step_lock:
        num = _radix(llm).cached_prefix_len(token_ids) // bs
    return block_keys(token_ids[: num * bs], bs)


def all_cached_blocks(llm: Any) -> list[bytes]:
    """Hashes of every block in `llm`'s device prefix cache (a router rebuilds its index from these)."""
    bs = llm.config.block_size
    out: list[bytes] = []
    with llm._step_lock:
        stack = [(child, b"") for child in _radix(llm).root.children.values()]
        while stack:
            node, parent = stack.pop()
            keys = block_keys(list(node.key), bs, 0, parent)
            out.extend(keys)
            stack.extend((child, keys[-1]) for child in node.children.values())
    return out


def export_prefix(llm: Any, token_ids: list[int]) -> PrefixKV:
    """Copy out the KV of the cached page-aligned prefix of `token_ids` (possibly empty)."""
    bs = llm.config.block_size
    with llm._step_lock:
        match = _radix(llm).match_prefix(token_ids, count=False)
        kv = llm.core.runner.kv_cache
        index = torch.tensor(match.block_ids, dtype=torch.long, device=kv.k.device)
        k = kv.k.index_select(1, index).cpu()
        v = kv.v.index_select(1, index).cpu()
    return PrefixKV(list(token_ids[: match.num_tokens]), bs, k, v)


def import_prefix(llm: Any, prefix: PrefixKV) -> int:
    """Write `prefix`'s blocks that `llm` does not already cache into its pool and prefix tree.

    Returns the number of blocks written (fewer when the pool cannot make room). Raises
    InvalidRequestError when the block size or the KV shape differs from `llm`'s."""
    bs = llm.config.block_size
    if prefix.block_size != bs:
        raise InvalidRequestError(f"prefix KV has block_size {prefix.block_size}; this engine uses {bs}")
    kv = llm.core.runner.kv_cache
    if prefix.num_blocks and (prefix.k.shape[0], *prefix.k.shape[2:]) != (kv.k.shape[0], *kv.k.shape[2:]):
        raise InvalidRequestError(f"prefix KV shape {tuple(prefix.k.shape)} does not fit cache {tuple(kv.k.shape)}")
    sched = llm.core.scheduler
    with llm._step_lock:
        radix = _radix(llm)
        have = radix.cached_prefix_len(prefix.token_ids) // bs
        match = radix.match_prefix(prefix.token_ids[: have * bs], count=False)
        radix.lock(match.node)  # making room must not evict the prefix being extended
        try:
            room = sched._make_room(prefix.num_blocks - have)
        finally:
            radix.unlock(match.node)
        if not room or have == prefix.num_blocks:
            return 0
        new = sched.pool.allocate(prefix.num_blocks - have)
        index = torch.tensor(new, dtype=torch.long, device=kv.k.device)
        kv.k.index_copy_(1, index, prefix.k[:, have:].to(kv.k.device, kv.k.dtype))
        kv.v.index_copy_(1, index, prefix.v[:, have:].to(kv.v.device, kv.v.dtype))
        radix.insert(prefix.token_ids, match.block_ids + new)
        sched.pool.decref(new)  # the tree holds them now
    return len(new)


def watch_evictions(llm: Any, on_removed: Callable[[list[bytes]], None]) -> None:
    """Call `on_removed(hashes)` (on the engine's step thread) whenever blocks leave the device
    prefix cache. Chains any eviction hook already installed (the host KV tier's)."""
    radix = _radix(llm)
    previous = radix.on_evict
    bs = llm.config.block_size

    def on_evict(path: list[int], blocks: list[int], hits: int) -> None:
        if previous is not None:
            previous(path, blocks, hits)
        on_removed(block_keys(path, bs)[len(path) // bs - len(blocks):])

    radix.on_evict = on_evict
