"""The routing simulator behind `benchmarks/routing.py --sim`: no model, only block ids. It runs the
full Mooncake trace at 8-64 replicas (`run_sim`) and the agent replay over KV budgets (`budget_sweep`).

Each replica is a prefix cache of bounded capacity (engine/kv/radix.py over block ids, LRU eviction)
and a single FIFO server whose service time is a stated cost model: `prefill_s` per prompt token it
must compute plus `decode_s` per output token. The router (agentrt/ray/router.py, the same code the
Ray client uses) sees only what a real one sees: each replica's block events and the requests in
flight. Times are simulated seconds, not measurements.
"""

from __future__ import annotations

import heapq
import itertools
import statistics
from dataclasses import dataclass, field
from typing import Any

from agentrt.ray.router import POLICIES, Router
from engine.kv.block_pool import BlockPool
from engine.kv.radix import RadixCache

MOONCAKE_BLOCK = 512  # tokens per Mooncake hash id


@dataclass(slots=True)
class SimRequest:
    arrival: float  # seconds
    blocks: list[Any]  # chained block ids of the prompt
    block_tokens: list[int]  # tokens in each block
    output_tokens: int
    session: str | None = None
    job: int = 0  # requests of one job run one after another


@dataclass(slots=True)
class SimReplica:
    cache: RadixCache
    free_at: float = 0.0
    work_s: float = 0.0
    inflight: list[tuple[float, int, list[Any]]] = field(default_factory=list)  # heap of (finish time, seq, blocks)
    removed: list[Any] = field(default_factory=list)


@dataclass(slots=True)
class SimResult:
    hit_rate: float
    jct_s: list[float]
    work_s: dict[str, float]


def _replica(capacity_blocks: int) -> SimReplica:
    cache = RadixCache(BlockPool(capacity_blocks), 1)
    rep = SimReplica(cache)

    def on_evict(path: list[Any], blocks: list[int], hits: int) -> None:
        rep.removed.extend(path[len(path) - len(blocks):])

    cache.on_evict = on_evict
    return rep


def _serve(rep: SimReplica, req: SimRequest) -> int:
    """Run `req`'s prefix through the replica's cache; return the blocks it found cached."""
    cache, pool, ids = rep.cache, rep.cache.pool, req.blocks
    match = cache.match_prefix(ids)
    cache.lock(match.node)
    missing = len(ids) - match.num_tokens
    if not pool.can_allocate(missing):
        cache.evict(missing - pool.num_free_blocks)
    fit = min(missing, pool.num_free_blocks)
    new = pool.allocate(fit)
    cache.insert(ids[: match.num_tokens + fit], match.block_ids + new)
    pool.decref(new)
    cache.unlock(match.node)
    return match.num_tokens


def simulate(requests: list[SimRequest], num_replicas: int, policy: str, capacity_blocks: int,
             prefill_s: float, decode_s: float, overlap_weight: float = 1.0, affinity_slack: int | None = 1,
             balance_slack: float | None = None, concurrency: int | None = None) -> SimResult:
    """Route `requests` over `num_replicas` replicas with `policy`. A job's requests are consecutive
    in `requests`; its first arrives at `arrival`, each later one `arrival` seconds (its tool time)
    after the previous one finished. With `concurrency`, at most that many jobs are in flight (in
    order of arrival; a job waiting for a slot starts when one frees)."""
    router = Router(policy, overlap_weight, affinity_slack, balance_slack)
    reps = {f"r{i}": _replica(capacity_blocks) for i in range(num_replicas)}
    for name in reps:
        router.add_replica(name)
    jobs: dict[int, list[SimRequest]] = {}
    for r in requests:
        jobs.setdefault(r.job, []).append(r)
    order = sorted(jobs, key=lambda j: (jobs[j][0].arrival, j))
    first = order if concurrency is None else order[:concurrency]
    waiting = [] if concurrency is None else order[concurrency:]
    queue = [(jobs[job][0].arrival, job, 0) for job in first]
    heapq.heapify(queue)
    end: dict[int, float] = {}
    seq = itertools.count()  # tie-break for the in-flight heaps
    hit = total = 0
    while queue:
        now, job, k = heapq.heappop(queue)
        req = jobs[job][k]
        for name, rep in reps.items():  # requests finished by now leave the router's load
            while rep.inflight and rep.inflight[0][0] <= now:
                router.end(name, heapq.heappop(rep.inflight)[2])
        decision = router.route(req.blocks, req.session)
        name = decision.replica
        rep = reps[name]
        cached = _serve(rep, req)
        stored = rep.cache.cached_prefix_len(req.blocks)
        router.index.apply(name, stored=req.blocks[:stored], removed=rep.removed)
        rep.removed = []
        hit_tokens = sum(req.block_tokens[:cached])
        hit += hit_tokens
        total += sum(req.block_tokens)
        service = (sum(req.block_tokens) - hit_tokens) * prefill_s + req.output_tokens * decode_s
        rep.free_at = max(now, rep.free_at) + service
        rep.work_s += service
        heapq.heappush(rep.inflight, (rep.free_at, next(seq), req.blocks))
        router.begin(name, req.blocks, cached_blocks=decision.overlap_blocks)
        if k + 1 < len(jobs[job]):
            heapq.heappush(queue, (rep.free_at + jobs[job][k + 1].arrival, job, k + 1))
        else:
            end[job] = rep.free_at
            if waiting:
                nxt = waiting.pop(0)
                heapq.heappush(queue, (max(rep.free_at, jobs[nxt][0].arrival), nxt, 0))
    jct = [end[j] - jobs[j][0].arrival for j in jobs]
    return SimResult(hit / total if total else 0.0, jct, {n: r.work_s for n, r in reps.items()})


def agent_requests(jobs: list[Any], block_size: int) -> list[SimRequest]:
    """The agent replay's calls as simulator requests: each prompt's whole blocks, named by chained
    hashes (a block's name covers every token up to its end), one job per run, no tool time."""
    out = []
    for j, job in enumerate(jobs):
        for prompt, num_out in job.turns:
            names, h = [], 0
            for i in range(len(prompt) // block_size):
                h = hash((h, tuple(prompt[i * block_size:(i + 1) * block_size])))
                names.append(h)
            out.append(SimRequest(0.0, names, [block_size] * len(names), num_out, session=f"job{j}", job=j))
    return out


def budget_sweep(jobs: list[Any], block_size: int, counts: list[int], concurrencies: list[int], headrooms: list[float],
                 prefill_s: float = 2e-5, decode_s: float = 5e-3, balance_slack: float | None = None) -> list[dict[str, Any]]:
    """kv-aware and round-robin hit rates on the agent replay over KV budgets (benchmarks/routing_bounds.py's
    rule at each concurrency and headroom; the budget never falls below the longest call, which a
    replica must hold to serve it) and replica counts, against one replica with the pooled budget:
    how far the ratio kv-aware / round-robin can go on this data, whatever the budget."""
    from benchmarks.routing_bounds import kv_blocks_per_replica

    requests = agent_requests(jobs, block_size)
    rows = []
    for conc in concurrencies:
        for headroom in headrooms:
            for n in counts:
                per = kv_blocks_per_replica(jobs, n, conc, headroom, block_size)
                single = simulate(requests, 1, "kv-aware", per * n, prefill_s, decode_s, concurrency=conc).hit_rate
                kv = simulate(requests, n, "kv-aware", per, prefill_s, decode_s, balance_slack=balance_slack,
                              concurrency=conc)
                rr = simulate(requests, n, "round-robin", per, prefill_s, decode_s, concurrency=conc).hit_rate
                loads = list(kv.work_s.values())
                rows.append({"concurrency": conc, "headroom": headroom, "replicas": n, "kv_blocks_per_replica": per,
                             "single": single, "kv-aware": kv.hit_rate, "round-robin": rr,
                             "kv_vs_single": kv.hit_rate / single, "kv_vs_round_robin": kv.hit_rate / rr,
                             "imbalance": max(loads) / (sum(loads) / len(loads)) - 1})
    return rows


# ---- the full Mooncake trace at 8-64 replicas (routing.py --sim) ------------------------------
def sim_requests(reqs: list[dict[str, Any]], stretch: float) -> list[SimRequest]:
    out = []
    for j, r in enumerate(reqs):
        n = len(r["hash_ids"])
        sizes = [MOONCAKE_BLOCK] * (n - 1) + [r["input_length"] - MOONCAKE_BLOCK * (n - 1)]
        out.append(SimRequest(r["timestamp"] / 1000 * stretch, list(r["hash_ids"]), sizes, r["output_length"], job=j))
    return out


def run_sim(reqs: list[dict[str, Any]], counts: list[int], capacity_tokens: float, prefill_s: float, decode_s: float,
            load: float, overlap_weight: float, affinity_slack: int | None = 1,
            balance_slack: float | None = None) -> dict[str, dict[str, Any]]:
    """Per replica count and policy; arrivals stretched so the offered (uncached) work is `load`
    times the replicas' capacity."""
    duration = max(r["timestamp"] for r in reqs) / 1000
    work = sum(r["input_length"] * prefill_s + r["output_length"] * decode_s for r in reqs)
    capacity = max(1, int(capacity_tokens // MOONCAKE_BLOCK))
    out: dict[str, dict[str, Any]] = {}
    for n in counts:
        stretch = work / (n * load * duration)
        requests = sim_requests(reqs, stretch)
        single = simulate(requests, 1, "round-robin", capacity * n, prefill_s, decode_s)
        out[f"{n}"] = {"single_replica_hit_rate": single.hit_rate}
        for policy in POLICIES:
            res = simulate(requests, n, policy, capacity, prefill_s, decode_s, overlap_weight, affinity_slack, balance_slack)
            loads = list(res.work_s.values())
            ordered = sorted(res.jct_s)
            out[f"{n}"][policy] = {"hit_rate": res.hit_rate, "jct_mean_s": statistics.fmean(res.jct_s),
                                   "jct_p99_s": ordered[int(0.99 * (len(ordered) - 1))],
                                   "imbalance": max(loads) / statistics.fmean(loads) - 1}
    return out
