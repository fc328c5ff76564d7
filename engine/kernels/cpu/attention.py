"""Paged attention in C: decode, speculative verification and (with AVX-512) prefill chunks.

Why: through torch, a sequence's context must first become one tensor (a `cat` of its block runs,
~1 MB per layer at 2k tokens) and then goes through SDPA or two strided `bmm`s; at decode sizes
that was 130-520 us per layer on the 2-core CI machine. This kernel reads K and V straight from
the cache blocks named by the block table, one (sequence, KV head) pair per work item (OpenMP),
with every query head of the group and every new token as a row: eight keys' dot products at a
time (8-wide FMAs reduced together), an online softmax per row (vectorised exp), and the
probability-weighted V rows summed in registers. Causality is per row: new token t of a sequence
with `ctx` tokens sees keys 0 .. ctx - q_len + t.

Verification steps and prefill chunks put many rows on one (sequence, KV head): with AVX-512,
work items of up to 32 rows (decode rows too, see TILED_MIN_ROWS) share every K and V load instead
(attention_tiled.h): 1.9x the row path at 17 tokens x 2 query heads over 2,000 keys, and any
number of new tokens per sequence (the row path takes at most MAX_QUERY_LEN). On AVX2 without
AVX-512 the two-pass path (attention_two_pass.h) takes those rows instead (up to MAX_QUERY_LEN new
tokens): scores of the item's rows block by block, one softmax per row, then the weighted V rows,
with K and V loads shared by two or three rows; it replaces the row path's per-block online
softmax (scalar max, expf and rescale per 16 keys). Both multi-row paths round differently from
the row path, which stays their reference twin (tests force it with `tiled_min_rows`).

The torch path (`paged_attention.paged_attention_torch`) is the oracle (tests/engine/test_cpu_attention.py).
Built on first use by `kernels.cpu.native`; without a C compiler `available()` is False.
"""

from __future__ import annotations

import functools
import itertools
from typing import Protocol

import torch

from engine.kernels.cpu import autotune, native

MAX_QUERY_LEN = 32  # new tokens per sequence up to which a step uses the kernel (larger: torch SDPA)
# Query rows (new tokens x query heads per KV head) of one (sequence, KV head) from which the
# multi-row path runs (AVX-512: tiled; AVX2: two-pass); below it, and on other CPUs, the
# row-at-a-time path. 1: every row takes the multi-row path, so a token's attention is bitwise the same decoded alone or verified among
# drafts (the paths round differently) and greedy speculation reproduces plain decoding exactly;
# the row path would decode a lone token ~7% faster. For the same reason it is not autotuned per
# CPU: only the work split below is (KNOBS), which never changes a sum.
TILED_MIN_ROWS = 1


class PagedBatch(Protocol):
    """What the kernel reads of a step's attention metadata (`engine.model.attention.AttentionMetadata`)."""

    @property
    def num_seqs(self) -> int: ...

    @property
    def max_query_len(self) -> int: ...

    @property
    def block_tables(self) -> torch.Tensor: ...  # [num_seqs, max_blocks] int64

    @property
    def context_lens_t(self) -> torch.Tensor: ...  # [num_seqs] int64

    @property
    def cu_query_lens_t(self) -> torch.Tensor | None: ...  # [num_seqs + 1] int64 CPU


_P, _I = native.PTR, native.I64
_SIGNATURES = (("paged_attention", (_P, _I, _P, _P, _P, _I, _P, _P, _I, _I, _I, _I, native.F32, _P, _I, _I, _I, _P, _P, _P), _I),
               ("tiled_supported", (_I,), _I), ("two_pass_supported", (_I,), _I))

# The work split (attention.c's tune array), chosen per CPU by autotune.py among numerically identical
# candidates: query rows per tiled work item, the items' OpenMP schedule (0: dynamic, 1: static) and
# the work below which one thread runs the call. TILED_MIN_ROWS is not among them (see above).
KNOBS = ("rows_per_item", "static_schedule", "min_parallel_work")
DEFAULT = (32, 0, 0)
CANDIDATES = tuple(itertools.product((8, 16, 32), (0, 1), (0, 1 << 16, 1 << 18)))
TUNE_HEADS = (8, 2, 64)  # query heads, KV heads, head size of the tuning workloads (GQA 4:1)


def _tune_case(query_lens: list[int], ctx_lens: list[int], seed: int) -> autotune.Workload:
    """One call on random caches (16-token blocks, scattered) with these new tokens and contexts."""
    hq, hkv, d = TUNE_HEADS
    block, g = 16, torch.Generator().manual_seed(seed)
    nblocks = [-(-c // block) for c in ctx_lens]
    perm = torch.randperm(sum(nblocks), generator=g)
    tables = torch.zeros(len(ctx_lens), max(nblocks), dtype=torch.int64)
    for s, start in enumerate(itertools.accumulate([0, *nblocks[:-1]])):
        tables[s, : nblocks[s]] = perm[start : start + nblocks[s]]
    k, v = (torch.randn(sum(nblocks), block, hkv, d, generator=g) for _ in range(2))
    q = torch.randn(sum(query_lens), hq, d, generator=g)
    cu = torch.tensor([0, *itertools.accumulate(query_lens)], dtype=torch.int64)
    ctx = torch.tensor(ctx_lens, dtype=torch.int64)
    lib = _KERNELS.require()

    def call(tune: int) -> torch.Tensor:
        out = torch.empty_like(q)
        lib.paged_attention(q.data_ptr(), len(ctx_lens), cu.data_ptr(), ctx.data_ptr(), tables.data_ptr(), tables.shape[1],
                            k.data_ptr(), v.data_ptr(), block, hq, hkv, d, d ** -0.5, out.data_ptr(), torch.get_num_threads(),
                            TILED_MIN_ROWS, 0, None, tune, None)
        return out
    return call


def _workloads() -> dict[str, autotune.Workload]:
    """Decode (1 and 16 sequences) and verification (4 sequences x 8 tokens) steps to time."""
    return {"decode 1 x 512 keys": _tune_case([1], [512], 1),
            "decode 16 x 64-512 keys": _tune_case([1] * 16, [64 + 28 * i for i in range(16)], 2),
            "verify 4 x 8 tokens x 512 keys": _tune_case([8] * 4, [512] * 4, 3)}


_KERNELS = native.Kernels("attention", _SIGNATURES, autotune.Space(KNOBS, DEFAULT, CANDIDATES, _workloads))


def available() -> bool:
    """Whether the compiled kernel can be used (builds it on the first call)."""
    return _KERNELS.available()


@functools.cache
def tiled_supported(head_dim: int) -> bool:
    """Whether the tiled path runs here for this head size (AVX-512 build, head_dim 32/64/128):
    then any number of new tokens per sequence is supported (prefill chunks too)."""
    lib = _KERNELS.get()
    return lib is not None and bool(lib.tiled_supported(head_dim))


@functools.cache
def multi_row_supported(head_dim: int) -> bool:
    """Whether this build has a path that shares each K and V block between a (sequence, KV head)'s
    rows here for this head size: the tiled path (AVX-512) or the two-pass path (AVX2 without
    AVX-512, head_dim % 8 == 0; at most MAX_QUERY_LEN new tokens per sequence)."""
    lib = _KERNELS.get()
    return lib is not None and bool(lib.tiled_supported(head_dim) or lib.two_pass_supported(head_dim))


@functools.cache
def tree_supported(head_dim: int) -> bool:
    """Whether token trees (speculative tree verification: each row sees the cached context and its
    ancestors among the new tokens) run here for this head size: the two-pass path only (AVX2
    without AVX-512). The tiled AVX-512 path shares key tiles between rows and takes no tree."""
    lib = _KERNELS.get()
    return lib is not None and bool(lib.two_pass_supported(head_dim)) and not lib.tiled_supported(head_dim)


def supports(q: torch.Tensor, k_cache: torch.Tensor, meta: PagedBatch, variant: bool = False) -> bool:
    """Whether this step's attention can run in the kernel: fp32 CPU tensors, contiguous caches,
    blocks of at most 64 tokens, and at most MAX_QUERY_LEN new tokens per sequence unless the
    tiled path runs here (`tiled_supported`; not for a `variant`: sliding window or sinks)."""
    return (
        q.device.type == "cpu" and q.dtype == torch.float32 and k_cache.dtype == torch.float32
        and k_cache.shape[1] <= 64 and available()
        and (meta.max_query_len <= MAX_QUERY_LEN or (not variant and tiled_supported(q.shape[-1])))
    )


def paged_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: PagedBatch, scale: float,
    tiled_min_rows: int | None = None, window: int = 0, sinks: torch.Tensor | None = None, tune: int | None = None,
    parents: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of every new token over its sequence's cached context (its own K/V
    already written): q [num_tokens, Hq, D] -> [num_tokens, Hq, D]. `window` > 0: a token sees its
    last `window` keys only; `sinks` [Hq]: per-head logits joining the softmax denominator (both
    run on the row path). `tiled_min_rows` overrides
    TILED_MIN_ROWS (tests force either path with it); `tune` the address of another work split
    than the one in force (tests compare the candidates with it). Raises ValueError when `supports` does not
    hold, the caches are not contiguous, or a sequence has more than MAX_QUERY_LEN new tokens
    and the override keeps it off the tiled path. `parents` [num_tokens] int64 (CPU): token trees
    (`tree_supported`), each new token's parent among its sequence's earlier new tokens (-1: the
    last cached token); a token at depth d then sits at position ctx - q_len + d and sees the
    context and its ancestors only, each score and sum in the order plain decoding of that path
    takes (bitwise equal; tests/engine/test_tree_attention.py). ValueError where trees do not run."""
    lib = _KERNELS.require()
    variant = window > 0 or sinks is not None
    if not supports(q, k_cache, meta, variant) or not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("paged_attention (C) needs fp32 CPU tensors, contiguous caches, blocks <= 64 tokens "
                         f"and <= {MAX_QUERY_LEN} new tokens per sequence (more only on the tiled AVX-512 path)")
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    if num_heads % num_kv_heads or k_cache.shape[3] != head_dim:
        raise ValueError(f"q heads {num_heads} x {head_dim} do not fit the cache's {num_kv_heads} x {k_cache.shape[3]}")
    qc = q.contiguous()
    out = torch.empty_like(qc)
    tables = meta.block_tables
    cu = meta.cu_query_lens_t
    if cu is None:
        raise ValueError("attention metadata built for another device (no cu_query_lens_t)")
    sink = None if sinks is None else sinks.detach().float().contiguous()
    if sink is not None and sink.shape != (num_heads,):
        raise ValueError(f"sinks must be [{num_heads}], got {tuple(sink.shape)}")
    par = None
    if parents is not None:
        if window > 0 or sinks is not None or not tree_supported(head_dim):
            raise ValueError("token trees need the two-pass path (AVX2 without AVX-512, no window or sinks)")
        par = parents.to(torch.int64).contiguous()
        if par.shape != (num_tokens,):
            raise ValueError(f"parents must be [{num_tokens}], got {tuple(par.shape)}")
    status = lib.paged_attention(qc.data_ptr(), meta.num_seqs, cu.data_ptr(), meta.context_lens_t.data_ptr(), tables.data_ptr(),
                                 tables.shape[1], k_cache.data_ptr(), v_cache.data_ptr(), k_cache.shape[1], num_heads, num_kv_heads,
                                 head_dim, scale, out.data_ptr(), torch.get_num_threads(),
                                 TILED_MIN_ROWS if tiled_min_rows is None else tiled_min_rows, window,
                                 None if sink is None else sink.data_ptr(), _KERNELS.tune if tune is None else tune,
                                 None if par is None else par.data_ptr())
    if status == -2:
        raise ValueError(f"token trees need the two-pass path for every sequence (<= {MAX_QUERY_LEN} new tokens, tiled_min_rows={tiled_min_rows})")
    if status != 0:
        raise ValueError(f"more than {MAX_QUERY_LEN} new tokens per sequence need the tiled path (tiled_min_rows={tiled_min_rows})")
    return out
