"""The contract between the runner and the model's attention: paged KV cache + per-step metadata.

The runner builds one `AttentionMetadata` per step; every attention layer reads it. The KV cache is
one pair of tensors for all layers, `[num_layers, num_blocks, block_size, num_kv_heads, head_dim]`.
A token's KV slot is `block_id * block_size + offset`; `slot_mapping` gives the slot of every new token.
Sequences in a step are packed back to back: sequence i owns query rows
`cu_query_lens[i]:cu_query_lens[i+1]` and attends causally over its first `context_lens[i]` cached+new
tokens, which live in the blocks `block_tables[i, :ceil(context_lens[i] / block_size)]`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(slots=True)
class KVCache:
    k: torch.Tensor  # [num_layers, num_blocks, block_size, num_kv_heads, head_dim]
    v: torch.Tensor  # [num_layers, num_blocks, block_size, num_kv_heads, head_dim]

    @property
    def num_blocks(self) -> int:
        return self.k.shape[1]

    @property
    def block_size(self) -> int:
        return self.k.shape[2]

    @classmethod
    def allocate(
        cls,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> KVCache:
        shape = (num_layers, num_blocks, block_size, num_kv_heads, head_dim)
        return cls(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))


@dataclass(slots=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [num_tokens] int64: where each new token's K/V is written
    query_lens: list[int]  # [num_seqs] new tokens per sequence this step
    context_lens: list[int]  # [num_seqs] tokens in KV after this step (cached + new)
    cu_query_lens: list[int]  # [num_seqs + 1] prefix sums of query_lens
    block_tables: torch.Tensor  # [num_seqs, max_num_blocks] int64, padded with 0
    context_lens_t: torch.Tensor  # [num_seqs] int64 (device copy of context_lens)
    max_context_len: int
    block_size: int = 0  # tokens per KV block (0: unknown, no cascade groups)
    block_table_lists: list[list[int]] = field(default_factory=list)  # host copies of the tables
    cu_query_lens_t: torch.Tensor | None = None  # [num_seqs + 1] int64 CPU copy of cu_query_lens (CPU kernels)
    # Derived once per step from query_lens (every attention layer asks):
    max_query_len: int = field(init=False)  # the most new tokens of one sequence (0 for an empty step)
    is_decode: bool = field(init=False)  # every sequence adds exactly one token (pure decode step)
    _cascade: list[tuple[torch.Tensor, int]] | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        self.max_query_len = max(self.query_lens, default=0)
        self.is_decode = all(q == 1 for q in self.query_lens)

    @property
    def cascade(self) -> list[tuple[torch.Tensor, int]]:
        """CPU decode steps only: groups of sequences whose block tables start with the same full
        blocks (a shared cached prefix), each (seq indices, number of shared blocks); see
        cascade_groups. Computed on first use: only the torch fallback reads them (the C and Triton
        decode kernels never do), so steps served by a kernel skip the grouping."""
        if self._cascade is None:
            cpu_decode = self.is_decode and self.block_size > 0 and self.block_tables.device.type == "cpu"
            groups = cascade_groups(self.block_table_lists, self.context_lens, self.block_size) if cpu_decode else []
            self._cascade = [(torch.tensor(ix, dtype=torch.long, device=self.block_tables.device), n) for ix, n in groups]
        return self._cascade

    @property
    def num_seqs(self) -> int:
        return len(self.query_lens)

    @classmethod
    def build(
        cls,
        query_lens: list[int],
        context_lens: list[int],
        block_tables: list[list[int]],
        block_size: int,
        device: torch.device | str,
    ) -> AttentionMetadata:
        """Build metadata from per-sequence lengths and block tables (host lists)."""
        slots: list[int] = []
        for q, c, table in zip(query_lens, context_lens, block_tables, strict=True):
            for pos in range(c - q, c):
                slots.append(table[pos // block_size] * block_size + pos % block_size)
        max_blocks = max((len(t) for t in block_tables), default=0)
        padded = [t + [0] * (max_blocks - len(t)) for t in block_tables]
        cu = [0]
        for q in query_lens:
            cu.append(cu[-1] + q)
        return cls(
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=device),
            query_lens=list(query_lens),
            context_lens=list(context_lens),
            cu_query_lens=cu,
            block_tables=torch.tensor(padded, dtype=torch.long, device=device).view(len(block_tables), max_blocks),
            context_lens_t=torch.tensor(context_lens, dtype=torch.long, device=device),
            max_context_len=max(context_lens, default=0),
            block_size=block_size,
            block_table_lists=[list(t) for t in block_tables],
            cu_query_lens_t=torch.tensor(cu, dtype=torch.long) if torch.device(device).type == "cpu" else None,
        )


MIN_CASCADE_BLOCKS = 4


def cascade_groups(block_tables: list[list[int]], context_lens: list[int], block_size: int) -> list[tuple[list[int], int]]:
    """Group sequences that share their leading KV blocks (same prefix-cache entries).

    Returns (member indices, shared block count) for every group of >= 2 sequences sharing at least
    MIN_CASCADE_BLOCKS full blocks that lie entirely before each member's newest token.
    """
    by_first: dict[int, list[int]] = {}
    for i, table in enumerate(block_tables):
        if table:
            by_first.setdefault(table[0], []).append(i)
    groups = []
    for members in by_first.values():
        if len(members) < 2:
            continue
        shared = min((context_lens[i] - 1) // block_size for i in members)
        first = block_tables[members[0]]
        for i in members[1:]:
            table = block_tables[i]
            n = 0
            while n < shared and table[n] == first[n]:
                n += 1
            shared = n
        if shared >= MIN_CASCADE_BLOCKS:
            groups.append((members, shared))
    return groups
