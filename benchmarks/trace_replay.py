"""Replay a Mooncake-format trace through the engine's prefix cache (no model needed): token hit
rate with unlimited capacity and with bounded device KV capacity (LRU eviction of unlocked leaves).

Trace lines: {timestamp (ms), input_length, output_length, hash_ids}; hash_ids name the request's
512-token prompt blocks (equal ids = identical block, chained from the start). Each id is one
cache block here (block_size 1 over ids, 512 tokens per block; a request's last block holds the
remainder of its input).

    python benchmarks/trace_replay.py [--trace FILE] [--capacities 1e6 3e6 1e7] [--host 1e7] [--disk 1e8]
    python benchmarks/trace_replay.py --model [--model-blocks 16] [--model-requests N]

`--model` also replays a scaled-down trace on the embedded model and reports time to first token
without and with the host tier: each hash id becomes 16 seeded tokens, each request keeps its first
`--model-blocks` blocks and generates one token, requests run one at a time in trace order; the
device KV holds 1/8 of the distinct blocks and the host tier 1/2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import OrderedDict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.report import markdown_table, print_table, write_section  # noqa: E402
from engine.config import data_file  # noqa: E402
from engine.kv.block_pool import BlockPool  # noqa: E402
from engine.kv.radix import RadixCache  # noqa: E402

BLOCK_TOKENS = 512


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def block_tokens(req: dict, i: int) -> int:
    n = len(req["hash_ids"])
    return BLOCK_TOKENS if i < n - 1 else req["input_length"] - BLOCK_TOKENS * (n - 1)


def replay(trace: list[dict], capacity_tokens: float | None, sim: TierSim | None = None) -> tuple[float, int]:
    """Token hit rate and evicted blocks for a device cache of `capacity_tokens` (None = unlimited),
    with lower tiers when `sim` (built on this replay's cache by `replay_tiers`) is given."""
    cache = sim.cache if sim is not None else RadixCache(BlockPool(_num_blocks(trace, capacity_tokens)), 1)
    pool = cache.pool
    hit = total = evicted = 0
    for req in trace:
        ids = req["hash_ids"]
        if sim is not None:
            sim.extend(ids, cache.cached_prefix_len(ids))
        match = cache.match_prefix(ids)
        hit += sum(block_tokens(req, i) for i in range(match.num_tokens))
        total += req["input_length"]
        cache.lock(match.node)  # the request's cached prefix is in use while it is admitted
        missing = len(ids) - match.num_tokens
        if not pool.can_allocate(missing):
            evicted += cache.evict(missing - pool.num_free_blocks)
        fit = min(missing, pool.num_free_blocks)
        new = pool.allocate(fit)
        cache.insert(ids[: match.num_tokens + fit], match.block_ids + new)
        pool.decref(new)  # the tree keeps them; the request is done
        cache.unlock(match.node)
    return hit / total, evicted


def _num_blocks(trace: list[dict], capacity_tokens: float | None) -> int:
    if capacity_tokens is None:
        return sum(len(r["hash_ids"]) for r in trace)
    return max(1, int(capacity_tokens // BLOCK_TOKENS))


class TierSim:
    """Bookkeeping twin of engine/kv/tiers.py (no tensors): evicted device blocks go to a host LRU,
    blocks dropped from host go to a disk LRU; a request's prefix is extended from either."""

    def __init__(self, cache: RadixCache, host_blocks: int, disk_blocks: int, disk_min_hits: int = 2) -> None:
        self.cache, self.host_cap, self.disk_cap, self.min_hits = cache, host_blocks, disk_blocks, disk_min_hits
        self.host: OrderedDict[tuple[int, ...], int] = OrderedDict()  # key -> uses (as HostKVTier.hits)
        self.disk: OrderedDict[tuple[int, ...], int] = OrderedDict()
        self.disk_writes = 0
        cache.on_evict = self.offload

    def offload(self, path: list[int], blocks: list[int], hits: int = 0) -> None:
        first = len(path) - len(blocks)
        for i in range(first, len(path)):
            self._put(self.host, tuple(path[: i + 1]), self.host_cap, self.disk, hits)

    def _put(self, tier: OrderedDict, key: tuple[int, ...], cap: int, lower: OrderedDict | None, hits: int) -> None:
        tier[key] = tier.get(key, 0) + hits
        tier.move_to_end(key)
        while len(tier) > cap:
            old, uses = tier.popitem(last=False)
            if lower is not None and self.disk_cap and uses >= self.min_hits:
                self.disk_writes += 1
                self._put(lower, old, self.disk_cap, None, uses)

    def extend(self, ids: list[int], cached: int) -> int:
        """Restore the blocks after the device-cached prefix from host/disk; returns how many."""
        n = cached
        while n < len(ids):
            key = tuple(ids[: n + 1])
            if key in self.host:
                self.host[key] += 1  # a restore is a use, as in HostKVTier
            elif key not in self.disk:
                break
            n += 1
        found = n - cached
        if not found:
            return 0
        pool, cache = self.cache.pool, self.cache
        prefix = cache.match_prefix(ids[:cached], count=False)
        cache.lock(prefix.node)
        if not pool.can_allocate(found):
            cache.evict(found - pool.num_free_blocks)
        cache.unlock(prefix.node)
        found = min(found, pool.num_free_blocks)
        new = pool.allocate(found)
        cache.insert(ids[: cached + found], prefix.block_ids + new)
        pool.decref(new)
        return found


def replay_tiers(trace: list[dict], device_tokens: float, host_tokens: float, disk_tokens: float, disk_min_hits: int) -> tuple[float, int]:
    """Token hit rate and disk block writes with the host and disk tiers below the device."""
    cache = RadixCache(BlockPool(_num_blocks(trace, device_tokens)), 1)
    sim = TierSim(cache, int(host_tokens // BLOCK_TOKENS), int(disk_tokens // BLOCK_TOKENS), disk_min_hits)
    rate, _ = replay(trace, device_tokens, sim)
    return rate, sim.disk_writes


def model_replay(trace: list[dict], max_blocks: int, label: str, **engine_options: object) -> dict[str, float]:
    """TTFT (prefill + first token, one request at a time) of the scaled-down trace on the model."""
    import random
    import statistics
    import time

    from engine import LLM, SamplingParams

    llm = LLM(block_size=16, **engine_options)  # type: ignore[arg-type]
    params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    blocks: dict[int, list[int]] = {}
    ttfts, cached, prompt = [], 0, 0
    for req in trace:
        ids = []
        for h in req["hash_ids"][:max_blocks]:
            if h not in blocks:
                blocks[h] = random.Random(h).choices(range(16, llm.model_config.vocab_size), k=16)
            ids += blocks[h]
        start = time.perf_counter()
        out = llm.generate([ids], params)[0]
        ttfts.append(time.perf_counter() - start)
        cached += out.usage.cached_tokens
        prompt += out.usage.prompt_tokens
    tier = llm.core.host_tier
    llm.close()
    ttfts.sort()
    print(f"{label}: TTFT mean {statistics.mean(ttfts) * 1e3:.1f} ms, hit {cached / prompt:.1%}")
    return {"ttft_mean_ms": statistics.mean(ttfts) * 1e3, "ttft_p50_ms": ttfts[len(ttfts) // 2] * 1e3,
            "ttft_p90_ms": ttfts[int(0.9 * len(ttfts))] * 1e3, "hit_rate": cached / prompt,
            "host_restored_blocks": float(tier.num_restored) if tier is not None else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trace", type=Path, default=None, help="Mooncake-format JSONL (default: ../shared/data/mooncake/synthetic_trace.jsonl)")
    ap.add_argument("--capacities", type=float, nargs="*", default=[1e6, 3e6, 1e7], help="device KV capacities in tokens")
    ap.add_argument("--host", type=float, default=1e7, help="host-memory tier capacity in tokens")
    ap.add_argument("--disk", type=float, default=1e8, help="disk tier capacity in tokens")
    ap.add_argument("--model", action="store_true", help="also replay a scaled-down trace on the embedded model (TTFT)")
    ap.add_argument("--model-blocks", type=int, default=16, help="blocks kept per request in the model replay")
    ap.add_argument("--model-requests", type=int, default=None, help="requests in the model replay (default: all)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    path = args.trace or data_file("mooncake", "synthetic_trace.jsonl")
    trace = load(path)
    rows, data = [], {}
    for cap in [None, *args.capacities]:
        rate, evicted = replay(trace, cap)
        label = "unlimited" if cap is None else f"{cap / 1e6:g}M tokens"
        rows.append([label, "device only", f"{rate:.1%}", evicted])
        data[label] = {"hit_rate": rate, "evicted_blocks": evicted}
        if cap is not None:
            for min_hits in (0, 2):
                with_tiers, writes = replay_tiers(trace, cap, args.host, args.disk, min_hits)
                tiers = f"+ host {args.host / 1e6:g}M + disk {args.disk / 1e6:g}M (disk admits >= {min_hits} uses)"
                rows.append([label, tiers, f"{with_tiers:.1%}", "-", writes])
                data[f"{label} {tiers}"] = {"hit_rate": with_tiers, "disk_block_writes": writes}
        rows[-1 if cap is None else -3].append("-")
    cols = ["device capacity", "tiers", "token hit rate", "evicted blocks", "disk block writes"]
    print_table(f"prefix-cache replay of {path.name} ({len(trace)} requests)", cols, rows)
    model_rows: list[list[object]] = []
    if args.model:
        sub = trace[: args.model_requests]
        distinct = len({h for r in sub for h in r["hash_ids"][: args.model_blocks]})
        dev, host = max(64, distinct // 8), distinct // 2
        configs = [("device only", {"num_kv_blocks": dev}), (f"device + host {host} blocks", {"num_kv_blocks": dev, "host_kv_blocks": host}),
                   ("unlimited device", {"num_kv_blocks": distinct + 512})]
        for label, opts in configs:
            m = model_replay(sub, args.model_blocks, label, **opts)
            data[f"model {label}"] = m
            model_rows.append([label, f"{m['hit_rate']:.1%}", m["ttft_mean_ms"], m["ttft_p50_ms"], m["ttft_p90_ms"]])
        mcols = ["KV (device holds 1/8 of distinct blocks)", "token hit rate", "TTFT mean ms", "TTFT p50 ms", "TTFT p90 ms"]
        print_table(f"embedded-model replay: {len(sub)} requests x <= {args.model_blocks} blocks of 16 tokens", mcols, model_rows)
    if not args.no_write:
        body = markdown_table(cols, rows) + ("\n\nThe trace's reference hit rate with an unlimited prefix cache is 65.1%. Tier rows "
                                             "use a bookkeeping twin of engine/kv/tiers.py (LRU at each tier; a block reaches disk only after "
                                             "the given number of uses: prefix hits on the device plus restores from host).")
        if model_rows:
            body += (f"\n\nEmbedded model, scaled down ({len(trace[: args.model_requests])} requests, each hash id = 16 seeded tokens, "
                     f"first {args.model_blocks} blocks per request, one output token, one request at a time, 2 CPU cores):\n\n"
                     + markdown_table(mcols, model_rows))
        cmd = "python benchmarks/trace_replay.py" + (f" --model --model-blocks {args.model_blocks}" if args.model else "")
        write_section("trace_replay", "Prefix-cache trace replay (Mooncake)", body, cmd, data)


if __name__ == "__main__":
    main()
