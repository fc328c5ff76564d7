"""The host-memory KV tier: blocks evicted from the device pool are kept in host memory and
restored (copied back) when a later request's prefix needs them, instead of being recomputed.

Blocks are keyed by a chained hash of the token path up to and including the block (two blocks
with the same key hold the KV of the same tokens at the same positions). LRU within a bounded
number of blocks. Pinned host memory when CUDA is present. Pure bookkeeping plus tensor copies; the
engine core wires it to the radix cache's eviction hook and the scheduler's prefix extension.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

import torch


def block_keys(token_ids: Sequence[int], block_size: int, start_block: int = 0, parent: bytes = b"") -> list[bytes]:
    """Chained keys of the whole blocks of `token_ids` from `start_block` on; `parent` is the key of
    block start_block - 1 (empty at the start)."""
    keys, key = [], parent
    for b in range(start_block, len(token_ids) // block_size):
        chunk = token_ids[b * block_size : (b + 1) * block_size]
        key = hashlib.blake2b(key + b"|" + ",".join(map(str, chunk)).encode(), digest_size=16).digest()
        keys.append(key)
    return keys


class HostKVTier:
    """Up to `capacity_blocks` KV blocks in host memory: key -> (k, v), each [layers, block, heads, dim]."""

    def __init__(self, capacity_blocks: int) -> None:
        if capacity_blocks < 1:
            raise ValueError(f"capacity_blocks must be >= 1, got {capacity_blocks}")
        self.capacity = capacity_blocks
        self.blocks: OrderedDict[bytes, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.num_offloaded = self.num_restored = self.num_dropped = 0
        self.bytes_moved = 0

    def __len__(self) -> int:
        return len(self.blocks)

    def __contains__(self, key: bytes) -> bool:
        return key in self.blocks

    def touch(self, key: bytes) -> None:
        """Mark a block most recently used (it is about to be restored)."""
        self.blocks.move_to_end(key)

    def offload(self, key: bytes, k: torch.Tensor, v: torch.Tensor) -> None:
        """Copy one block's KV (device views) into host memory, evicting the LRU block if full."""
        if key in self.blocks:
            self.blocks.move_to_end(key)
            return
        while len(self.blocks) >= self.capacity:
            self.blocks.popitem(last=False)
            self.num_dropped += 1
        pin = torch.cuda.is_available() and k.device.type == "cuda"
        hk = torch.empty(k.shape, dtype=k.dtype, pin_memory=pin)
        hv = torch.empty(v.shape, dtype=v.dtype, pin_memory=pin)
        hk.copy_(k, non_blocking=pin)
        hv.copy_(v, non_blocking=pin)
        self.blocks[key] = (hk, hv)
        self.num_offloaded += 1
        self.bytes_moved += 2 * k.numel() * k.element_size()

    def restore(self, key: bytes, k_dst: torch.Tensor, v_dst: torch.Tensor) -> None:
        """Copy a stored block back into device views (it stays stored, refreshed in LRU order)."""
        hk, hv = self.blocks[key]
        self.blocks.move_to_end(key)
        k_dst.copy_(hk, non_blocking=True)
        v_dst.copy_(hv, non_blocking=True)
        self.num_restored += 1
        self.bytes_moved += 2 * hk.numel() * hk.element_size()
