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
        v_dim: int | None = None,
    ) -> KVCache:
        """`v_dim` (default head_dim): the V width; 0 for latent attention (MLA), whose one cache
        entry per token lives in `k` and `v` holds no bytes."""
        shape = (num_layers, num_blocks, block_size, num_kv_heads, head_dim)
        v_shape = shape[:-1] + (head_dim if v_dim is None else v_dim,)
        return cls(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(v_shape, dtype=dtype, device=device))


@dataclass(slots=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [num_tokens] int64: where each new token's K/V is written
    query_lens: list[int]  # [num_seqs] new tokens per sequence this step
    context_lens: list[int]  # [num_seqs] tokens in KV after this step (cached + new)
    cu_query_lens: list[int]  # [num_seqs + 1] prefix sums of query_lens
    block_tables: torch.Tensor  # [num_seqs, max_num_blocks] int64, padded with 0
    context_lens_t: torch.Tensor  # [num_seqs] int64 (device copy of context_lens)
    max_context_len: int
    block_size: int = 0  # tokens per KV block (0: unknown)
    block_table_lists: list[list[int]] = field(default_factory=list)  # host copies of the tables
    cu_query_lens_t: torch.Tensor | None = None  # [num_seqs + 1] int64 copy of cu_query_lens on the step's device (C and Triton kernels)
    # Token trees (speculative tree verification; `with_trees`): per sequence its new tokens' parents among
    # its earlier new tokens (-1: the last cached token), None for causal rows; and all of them as one
    # CPU int64 tensor [num_tokens] (causal rows as chains). None: no tree this step.
    tree_parent_lists: list[list[int] | None] | None = None
    tree_parents: torch.Tensor | None = None
    # Derived once per step from query_lens (every attention layer asks):
    max_query_len: int = field(init=False)  # the most new tokens of one sequence (0 for an empty step)
    is_decode: bool = field(init=False)  # every sequence adds exactly one token (pure decode step)

    def __post_init__(self) -> None:
        self.max_query_len = max(self.query_lens, default=0)
        self.is_decode = all(q == 1 for q in self.query_lens)

    @property
    def num_seqs(self) -> int:
        return len(self.query_lens)

    def with_trees(self, parents: list[list[int] | None]) -> None:
        """Mark sequences whose new tokens form a tree (`parents[i]`: sequence i's, None: causal).
        A tree token at depth d sits at position ctx - q_len + d (the runner gives RoPE that position)
        but its KV slot is that of position ctx - q_len + its index, as `slot_mapping` says.
        Raises ValueError unless each parent precedes its child."""
        flat: list[int] = []
        for q, par in zip(self.query_lens, parents, strict=True):
            if par is None:
                flat.extend(range(-1, q - 1))
                continue
            if len(par) != q or any(not -1 <= p < t for t, p in enumerate(par)):
                raise ValueError(f"tree parents must precede their children, got {par} for {q} tokens")
            flat.extend(par)
        self.tree_parent_lists = list(parents)
        self.tree_parents = torch.tensor(flat, dtype=torch.int64)

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
            cu_query_lens_t=torch.tensor(cu, dtype=torch.long, device=device),
        )
