"""Draft-model drafting: a small model with the target's vocabulary proposes k tokens greedily.

The draft model keeps its own paged KV cache indexed by the *target's* block tables (same block
size and block count), so a sequence needs no second set of blocks: the scheduler's reservation
for the k drafts the target verifies also covers the k - 1 positions the drafting writes. Every
step the draft model also runs over the step's batch (`sync`), so its KV follows the target's
through prefills, prefix-cache hits computed by others and recompute after preemption.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine.errors import ModelLoadError
from engine.model.attention import AttentionMetadata, KVCache
from engine.sequence import Sequence

PLACEHOLDER = -1  # a draft slot reserved by the engine core, filled by `DraftModel.propose`


class DraftModel:
    """Loads the draft model from `path` and drafts for sequences whose block tables cover the
    draft positions. Raises ModelLoadError when the model is missing or its vocabulary differs."""

    def __init__(
        self, path: Path, device: torch.device, dtype: torch.dtype, num_blocks: int, block_size: int, vocab_size: int
    ) -> None:
        from engine.model.loader import load_model

        if not (path / "config.json").exists():
            raise ModelLoadError(f"draft model directory {path} has no config.json (train one with `python -m engine.train --draft`)")
        self.model, self.config = load_model(path, dtype=dtype, device=device)
        self.model.eval()
        if self.config.vocab_size != vocab_size:
            raise ModelLoadError(f"draft model vocabulary {self.config.vocab_size} != target vocabulary {vocab_size}")
        self.device, self.block_size = device, block_size
        self.kv = KVCache.allocate(
            self.config.num_layers, num_blocks, block_size, self.config.num_kv_heads, self.config.head_dim, dtype, device
        )

    @torch.inference_mode()
    def sync(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> None:
        """Run the draft model over a target step's batch, writing its KV (no logits)."""
        self.model.forward_prenorm(input_ids, positions, self.kv, meta)

    @torch.inference_mode()
    def propose(self, seqs: list[Sequence], ks: list[int]) -> list[list[int]]:
        """`ks[i]` greedy draft tokens continuing each sequence, whose last token is not yet computed."""
        drafts: list[list[int]] = [[] for _ in seqs]
        current = [seq.token_ids[-1] for seq in seqs]
        for j in range(max(ks, default=0)):
            active = [i for i, k in enumerate(ks) if k > j]
            positions = [len(seqs[i]) - 1 + j for i in active]
            meta = AttentionMetadata.build(
                [1] * len(active), [p + 1 for p in positions], [seqs[i].block_table for i in active], self.block_size, self.device
            )
            ids = torch.tensor([current[i] for i in active], device=self.device)
            pos = torch.tensor(positions, device=self.device)
            hidden = self.model(ids, pos, self.kv, meta)
            tokens = self.model.compute_logits(hidden).argmax(-1).tolist()
            for i, tok in zip(active, tokens, strict=True):
                drafts[i].append(tok)
                current[i] = tok
        return drafts
