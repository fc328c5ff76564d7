"""Batch -> tensors -> model -> sampled tokens. The only place that launches device work."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from engine.config import EngineConfig
from engine.cuda_graphs import DecodeGraphs
from engine.errors import ModelLoadError
from engine.kernels.cpu import attention as cpu_attention
from engine.kernels.cpu import linear as cpu_linear
from engine.kernels.cpu.busy import ThreadShedder
from engine.kernels.triton.attention import decode_kernel_supports
from engine.model.attention import AttentionMetadata, KVCache
from engine.model.config import ModelConfig
from engine.sampler import probabilities, sample
from engine.scheduler import ScheduledBatch
from engine.speculative.chooser import accept_tree_greedy
from engine.speculative.draft_model import PLACEHOLDER, DraftModel
from engine.speculative.rejection import accept
from engine.structured import mask_logits

logger = logging.getLogger(__name__)


def kv_bytes_per_block(model_config: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    per_token = model_config.num_layers * model_config.num_kv_heads * sum(model_config.kv_dims)
    return per_token * block_size * torch.empty((), dtype=dtype).element_size()


GREEDY_VERIFY_CHUNK = 4
MAX_TREE_NODES = cpu_attention.MAX_QUERY_LEN - 1  # draft tree nodes per request: with its last token, one kernel call's rows


def verify_greedy(compute_logits: Any, hidden: torch.Tensor, drafts: list[int]) -> tuple[int, int]:
    """Greedy verification of `drafts` against hidden states [k + 1, H] (the last token's, then each
    draft's): (number of drafts accepted, the next token). The LM head runs on a few rows at a time
    and stops at the first mismatch, so a short accepted prefix does not pay for all k + 1 rows.
    Equals `spec.rejection.accept_greedy` on the full logits (tested)."""
    k = len(drafts)
    for lo in range(0, k + 1, GREEDY_VERIFY_CHUNK):
        preds = compute_logits(hidden[lo : lo + GREEDY_VERIFY_CHUNK]).argmax(-1).tolist()
        for j, tok in enumerate(preds, start=lo):
            if j == k or tok != drafts[j]:
                return j, tok
    raise AssertionError("unreachable: row k always ends the loop")


def compact_kv(kv_cache: KVCache, block_table: list[int], moves: list[tuple[int, int]]) -> None:
    """Copy every layer's K and V of position src to position dst for each (src, dst) in `moves`
    (positions of one sequence, in its block table). A tree's accepted path has src >= dst, and no
    dst is another move's src, so the order of the copies does not matter."""
    moves = [(src, dst) for src, dst in moves if src != dst]
    if not moves:
        return
    bs = kv_cache.block_size
    src = torch.tensor([block_table[p // bs] * bs + p % bs for p, _ in moves], device=kv_cache.k.device)
    dst = torch.tensor([block_table[p // bs] * bs + p % bs for _, p in moves], device=kv_cache.k.device)
    for cache in (kv_cache.k, kv_cache.v):
        flat = cache.view(cache.shape[0], -1, *cache.shape[3:])  # [layers, slots, Hkv, D]
        flat[:, dst] = flat[:, src]


class ModelRunner:
    """Owns the model and the KV cache; runs one scheduled batch per `execute` call."""

    def __init__(
        self, model: Any, model_config: ModelConfig, config: EngineConfig, num_blocks: int
    ) -> None:
        self.model = model
        self.model_config = model_config
        self.config = config
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        # The MTP drafter keeps the MTP layer's KV in an extra last layer of the cache.
        self.mtp = "mtp" in config.drafters
        if self.mtp and getattr(model, "mtp", None) is None:
            raise ModelLoadError("speculative='mtp' needs a model with an MTP module (mtp_num_layers >= 1)")
        self.draft: DraftModel | None = None
        if "draft" in config.drafters:
            self.draft = DraftModel(
                config.draft_model_path, self.device, self.dtype, num_blocks, config.block_size, model_config.vocab_size
            )
        # CUDA graphs for decode steps need one spare "null" block for their padding rows.
        use_graphs = self.device.type == "cuda" and config.cuda_graphs and decode_kernel_supports(model_config.head_dim)
        self.kv_cache = KVCache.allocate(
            model_config.num_layers + int(self.mtp),
            num_blocks + int(use_graphs),
            config.block_size,
            model_config.num_kv_heads,
            model_config.head_dim,
            self.dtype,
            self.device,
            v_dim=model_config.kv_dims[1],
        )
        logger.info("KV cache: %d blocks of %d tokens on %s", num_blocks, config.block_size, self.device)
        # CPU: fewer kernel threads for a step while other processes keep cores busy (busy.py); only
        # for models whose fp32 steps of <= MAX_QUERY_LEN rows per sequence run on the C kernels,
        # whose sums do not depend on the thread count (torch's ops make no such promise)
        shed = (self.device.type == "cpu" and config.adaptive_cpu_threads and self.dtype == torch.float32
                and getattr(model, "cpu_thread_invariant", False) and cpu_linear.available())
        self.shedder = ThreadShedder(torch.get_num_threads()) if shed else None
        self._threads = torch.get_num_threads()  # what the previous step ran with
        self.graphs: DecodeGraphs | None = None
        if use_graphs:
            max_len = config.max_model_len or model_config.max_position_embeddings
            self.graphs = DecodeGraphs(model, self.kv_cache, num_blocks, -(-max_len // config.block_size), config.max_num_seqs)
        self.tree_verification = config.spec_tree and self._trees_supported()
        if config.spec_tree and not self.tree_verification:
            logger.info("tree verification is not supported here (see ModelRunner._trees_supported): chain drafts")

    def _trees_supported(self) -> bool:
        """Whether verify steps can run token trees: fp32 on the CPU with the C two-pass attention
        kernel (AVX2 without AVX-512: the tiled AVX-512 path takes no tree), a model whose attention
        takes trees (plain GQA; no window, sinks or latent attention), and neither the MTP module nor
        a draft model (both read the verified rows as a chain). Elsewhere (CUDA / Triton, bf16, the
        torch fallback) the engine drafts chains."""
        return (self.device.type == "cpu" and self.dtype == torch.float32 and cpu_attention.available()
                and cpu_attention.tree_supported(self.model_config.head_dim) and bool(getattr(self.model, "tree_attention", False))
                and not self.mtp and self.draft is None and self.graphs is None)

    def prepare(self, batch: ScheduledBatch) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        token_ids: list[int] = []
        positions: list[int] = []
        context_lens: list[int] = []
        trees: list[list[int] | None] = []
        for seq, num_new in zip(batch.seqs, batch.num_new_tokens, strict=True):
            start = seq.num_computed_tokens
            tokens = seq.token_ids + seq.draft_ids if seq.draft_ids else seq.token_ids
            token_ids.extend(tokens[start : start + num_new])
            context_lens.append(start + num_new)
            if seq.draft_parents is None:
                positions.extend(range(start, start + num_new))
                trees.append(None)
                continue
            # a draft tree: row 0 the last token, row i + 1 draft i; RoPE position = start + depth
            parents = [-1] + [p + 1 for p in seq.draft_parents]
            depth: list[int] = []
            for p in parents:
                depth.append(depth[p] + 1 if p >= 0 else 0)
            positions.extend(start + d for d in depth)
            trees.append(parents)
        meta = AttentionMetadata.build(
            batch.num_new_tokens,
            context_lens,
            [seq.block_table for seq in batch.seqs],
            self.config.block_size,
            self.device,
        )
        if any(t is not None for t in trees):
            meta.with_trees(trees)
        input_ids = torch.tensor(token_ids, dtype=torch.long, device=self.device)  # [num_tokens]
        pos = torch.tensor(positions, dtype=torch.long, device=self.device)  # [num_tokens]
        return input_ids, pos, meta

    def execute(self, batch: ScheduledBatch) -> tuple[list[list[int]], list[int], float]:
        """Run the batch. Returns, per sequence, the tokens to append (empty when it did not reach
        its end), how many of its drafts were accepted, and the step's device seconds."""
        if self.shedder is None or max(batch.num_new_tokens, default=0) > cpu_attention.MAX_QUERY_LEN:
            return self._execute(batch)
        before = torch.get_num_threads()
        self._threads = self.shedder.threads(self._threads)
        if self._threads == before:
            return self._execute(batch)
        torch.set_num_threads(self._threads)  # the kernels read it; their sums do not depend on it
        try:
            return self._execute(batch)
        finally:
            torch.set_num_threads(before)

    @torch.inference_mode()
    def _execute(self, batch: ScheduledBatch) -> tuple[list[list[int]], list[int], float]:
        start = time.perf_counter()
        num_filled = self._fill_drafts(batch) if self.draft is not None else 0
        input_ids, positions, meta = self.prepare(batch)
        prenorm = None
        if self.graphs is not None:  # decode and verification steps with one row count per sequence replay a graph
            prenorm = self.graphs.run(input_ids, positions, meta)
        if prenorm is None:
            prenorm = self.model.forward_prenorm(input_ids, positions, self.kv_cache, meta)  # [num_tokens, hidden]
        hidden = self.model.norm(prenorm)
        rows = [i for i in range(len(batch)) if batch.samples(i)]
        tokens: list[list[int]] = [[] for _ in range(len(batch))]
        accepted = [0] * len(batch)
        plain = [i for i in rows if not batch.seqs[i].draft_ids]
        if plain:
            for i, tok in zip(plain, self._sample_last(hidden, meta, [batch.seqs[i] for i in plain], plain), strict=True):
                tokens[i] = [tok]
        for i in rows:
            seq = batch.seqs[i]
            if seq.draft_ids:
                accepted[i], tokens[i] = self._verify(hidden, meta, seq, i)
        if self.mtp:
            self._mtp_drafts(batch, input_ids, positions, meta, prenorm, tokens, accepted)
        if self.draft is not None and num_filled < len(batch):
            # Drafting already wrote the KV of the rows it drafted; the others (plain, prefill, or
            # drafted by another drafter) need the draft model's KV too.
            self.draft.sync(input_ids, positions, meta)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return tokens, accepted, time.perf_counter() - start

    def _sample_last(self, hidden: torch.Tensor, meta: AttentionMetadata, seqs: list[Any], rows: list[int]) -> list[int]:
        last = torch.tensor([meta.cu_query_lens[i + 1] - 1 for i in rows], device=self.device)
        logits = self.model.compute_logits(hidden.index_select(0, last))  # [num_rows, vocab]
        for row, seq in enumerate(seqs):
            if seq.matcher is not None:
                mask_logits(logits[row], seq.matcher, logits.shape[-1])
        sampled = sample(logits, [s.params for s in seqs], [s.generator for s in seqs])
        for seq, tok in zip(seqs, sampled, strict=True):
            if seq.matcher is not None:
                seq.matcher.accept_token(tok)
        return sampled

    def _verify(self, hidden: torch.Tensor, meta: AttentionMetadata, seq: Any, i: int) -> tuple[int, list[int]]:
        """Score the last token and k drafts in one pass; accept losslessly (engine/speculative/rejection.py)."""
        k = len(seq.draft_ids)
        end = meta.cu_query_lens[i + 1]
        if seq.draft_parents is not None:
            return self._verify_tree(hidden[end - k - 1 : end], seq)
        if seq.params.greedy:
            a, nxt = verify_greedy(self.model.compute_logits, hidden[end - k - 1 : end], seq.draft_ids)
            return a, seq.draft_ids[:a] + [nxt]
        logits = self.model.compute_logits(hidden[end - k - 1 : end])  # [k + 1, vocab]
        drafts = torch.tensor([seq.draft_ids], device=logits.device)
        probs = torch.stack([probabilities(row, seq.params) for row in logits])[None]  # [1, k + 1, vocab]
        num, bonus = accept(probs.cpu(), drafts.cpu(), None, generator=seq.generator)
        accepted = int(num[0])
        return accepted, seq.draft_ids[:accepted] + [int(bonus[0])]

    def _verify_tree(self, hidden: torch.Tensor, seq: Any) -> tuple[int, list[int]]:
        """Greedy verification of a draft tree (hidden [nodes + 1, H]: the last token's, then each
        node's): walk the tree along the argmax (`chooser.accept_tree_greedy`), then move the accepted
        nodes' KV to the positions after the context (`compact_kv`) so the cache holds the path as
        plain decoding would have written it."""
        argmax = self.model.compute_logits(hidden).argmax(-1).tolist()
        path, nxt = accept_tree_greedy(seq.draft_parents, seq.draft_ids, argmax)
        start = seq.num_computed_tokens  # the last token's position
        compact_kv(self.kv_cache, seq.block_table, [(start + 1 + node, start + 1 + j) for j, node in enumerate(path)])
        return len(path), [seq.draft_ids[node] for node in path] + [nxt]

    def _fill_drafts(self, batch: ScheduledBatch) -> int:
        """Replace the core's placeholder drafts by the draft model's proposals; returns how many
        sequences it drafted for."""
        assert self.draft is not None
        rows = [seq for seq in batch.seqs if seq.draft_ids and seq.draft_ids[0] == PLACEHOLDER]
        if rows:
            for seq, draft in zip(rows, self.draft.propose(rows, [len(s.draft_ids) for s in rows]), strict=True):
                seq.draft_ids = draft
        return len(rows)

    def _mtp_drafts(
        self, batch: ScheduledBatch, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
        prenorm: torch.Tensor, tokens: list[list[int]], accepted: list[int],
    ) -> None:
        """Run the MTP module over the step (pairs: hidden at t, token t+1), writing its KV, and keep
        its guess for the token after each sampled one in `seq.mtp_draft`."""
        next_ids = torch.roll(input_ids, -1)
        rows: list[int] = []  # the row whose MTP output guesses the token after the new last one
        owners: list[Any] = []  # ... and its sequence
        for i, seq in enumerate(batch.seqs):
            end = meta.cu_query_lens[i + 1]
            if tokens[i]:
                row = end - 1 - len(seq.draft_ids) + accepted[i]  # the last accepted input position
                next_ids[row] = tokens[i][-1]
                rows.append(row)
                owners.append(seq)
            else:  # a prefill chunk: its next token is the prompt's next one
                next_ids[end - 1] = seq.token_ids[seq.num_computed_tokens + batch.num_new_tokens[i]]
                seq.mtp_draft = None
        hidden = self.model.forward_mtp(prenorm, next_ids, positions, self.kv_cache, meta)
        if rows:
            guesses = self.model.compute_logits(hidden[rows]).argmax(-1).tolist()
            for seq, guess in zip(owners, guesses, strict=True):
                seq.mtp_draft = guess
