"""What the routing benchmark's workload allows, by arithmetic (benchmarks/routing.py): the prefix
every agent run shares, the hit rate a never-evicting cache reaches and round-robin's without memory
pressure (the bounds the measured ratios are read against), the conversation-only hit rate, and the
per-replica KV budget that puts the replicas under the memory pressure routing exists for.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass(slots=True)
class Job:
    turns: list[tuple[list[int], int]]  # (prompt ids, output tokens) per LLM call


def shared_prefix_len(jobs: list[Job]) -> int:
    """Tokens every job's prompts start with (the agent's system prompt and tool schemas)."""
    prompts = [job.turns[0][0] for job in jobs if job.turns]
    n = min((len(p) for p in prompts), default=0)
    return next((i for i in range(n) if len({p[i] for p in prompts}) > 1), n)


def _common(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def round_robin_unbounded(jobs: list[Job], replicas: int, block_size: int) -> float:
    """Round-robin's expected hit rate with a cache that never evicts, each turn on a random one of
    `replicas` (the turns of concurrent jobs interleave, so a conversation's next replica is as
    good as random): a turn finds the shared prefix, or the prompt of the conversation's latest
    earlier turn on its replica (k turns back with probability (1/n)(1 - 1/n)^(k-1)), to the
    last whole block in common. What round-robin reaches without memory pressure; under pressure
    it falls toward the shared share. One replica: the never-evicting cache's hit rate."""
    shared = shared_prefix_len(jobs)
    stay = 1.0 / replicas
    total = cached = 0.0
    for job in jobs:
        prompts = [p for p, _ in job.turns]
        for t, prompt in enumerate(prompts):
            hit = 0.0
            for k in range(1, t + 1):
                same = max(_common(prompts[t - k], prompt), shared) // block_size * block_size
                hit += stay * (1 - stay) ** (k - 1) * same
            hit += (1 - stay) ** t * (shared // block_size * block_size)
            cached += hit
            total += len(prompt)
    return cached / total if total else 0.0


def hit_rate_bound(jobs: list[Job], block_size: int) -> dict[str, float]:
    """What any router can reach on `jobs`, by arithmetic. Every replica keeps the shared prefix (it
    opens every prompt), so no policy's hit rate falls below its share of the prompt tokens
    (`shared_share`); no policy beats a cache that never evicts, which holds each turn's prompt
    up to its last whole block shared with the previous turn's prompt (`ideal_hit_rate`; the
    generated tokens are not replayed, the recorded message is). So kv-aware / round-robin on
    all prompt tokens is at most ideal / shared (`max_ratio_vs_round_robin`), reached only if
    round-robin found none of a conversation's own tokens."""
    shared = shared_prefix_len(jobs)
    total = sum(len(prompt) for job in jobs for prompt, _ in job.turns)
    turns = sum(len(job.turns) for job in jobs)
    share = shared * turns / total if total else 0.0
    ideal = round_robin_unbounded(jobs, 1, block_size)  # one replica that never evicts
    return {"turns": turns, "mean_prompt_tokens": total / max(1, turns), "shared_share": share, "ideal_hit_rate": ideal,
            "max_ratio_vs_round_robin": ideal / share if share else float("nan")}


def conversation_hit_rate(calls: list[tuple[int, int]], shared: int) -> float:
    """Hit rate on the tokens past the shared prefix (a cached span is a prefix, so its tokens past
    `shared` are the conversation's own)."""
    total = sum(max(0, p - shared) for p, _ in calls)
    return sum(max(0, c - shared) for _, c in calls) / total if total else 0.0


KV_RULE = ("per-replica KV = max({factor} x (shared prefix + concurrency / replicas x the mean live conversation), "
           "the longest call); the 1-replica row gets replicas x that")


def kv_blocks_per_replica(jobs: list[Job], replicas: int, concurrency: int, factor: float, block_size: int) -> int:
    """The regime routing exists for: the live conversations' working set does not fit one replica
    but does fit the cluster when each replica keeps its own share. Live working set = the shared
    prefix + `concurrency` conversations, each holding its own tokens (past the shared prefix, the
    call's output included) at the mean over all turns (what a conversation in flight holds at a
    random moment; its final length would overstate it). Per replica: the shared prefix + its
    `1 / replicas` share of the conversations, times `factor` (room for turns longer than the mean),
    and never less than the longest single call. The same for every policy; round-robin, which
    sends every conversation to every replica, then needs `replicas` times the conversations'
    share per replica and evicts."""
    shared = shared_prefix_len(jobs)
    calls = [len(p) + out for job in jobs for p, out in job.turns]
    live = statistics.fmean(c - shared for c in calls)
    tokens = factor * (shared + concurrency / replicas * live)
    return max(-(-int(tokens) // block_size), -(-max(calls) // block_size))
