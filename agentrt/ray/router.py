"""The KV-aware router's policy: which engine replica serves a request. Pure: no Ray, no I/O.

A global `KVIndex` records which replica holds which prefix blocks. Blocks are named by chained
hashes (block i's hash covers every token up to the end of block i, as in the engine's KV tiers and
in Dynamo's KV router), so two requests share block i exactly when they share its hash, and a
request's cached prefix on a replica is the longest run of its hashes, from the first, that the
replica holds. Replicas feed the index with block events (stored / removed hashes).

Policies:
- `kv-aware`: Ray Serve LLM's prefix-aware rule with Dynamo's cost inside it. The replicas
  holding the longest prefix of the request compete while they have at most `affinity_slack`
  more requests in flight than the idlest replica; when none is that idle, or when every replica
  holds that prefix (a new conversation on a shared system prompt, or a prompt nobody holds),
  the replicas with the fewest requests in flight compete. Among those that compete, cost(r) =
  overlap_weight * blocks r must prefill + blocks active on r after admission (Dynamo's KV-router
  cost) picks. (Ray Serve LLM checks the slack on the busiest replica instead of on the holder;
  that moved conversations off replicas that were not the busy one, and let new conversations
  go by active blocks to replicas with more requests: benchmarks/routing.py, docs/benchmarks.md.) `affinity_slack=None` leaves the cost alone to decide: then one in-flight request's
  blocks outweigh a whole cached conversation and new jobs pile on the replicas holding a shared
  system prompt (benchmarks/routing.py, docs/benchmarks.md).
  Balance (`balance_slack`, kv-aware only): every replica's recent work (blocks it was sent to
  compute, prompt misses plus the output budget, decayed by half every `work_half_life` routed
  requests) is tracked; a new conversation goes to the least busy replica with the least of it,
  and a continuing one leaves its holders when every holder within the request slack has done
  more than (1 + `balance_slack`) x the mean and more than twice what the move costs (the blocks
  of the conversation it then re-prefills on the least-worked replica). Affinity places a conversation when it starts, before its length is known; without
  this, a few long conversations that start on one replica leave it with 1.4x the mean work
  (benchmarks/routing.py at 4 replicas). Off by default (`balance_slack=None`): its work measure
  counts prompt blocks and one output block per request, which fits prefill-bound agent turns
  but not decode-bound traffic (on the simulated Mooncake trace it cost kv-aware a third of its
  hit rate at 8-64 replicas); `balance_slack=0.15` is the measured setting for agent replays
  (docs/benchmarks.md, routing).
- `round-robin`: the next live replica in turn.
- `least-loaded`: the fewest requests in flight (then the fewest active blocks).

Session affinity needs no client key and no router state: ties are broken by rendezvous hashing of
the session id (or, without one, of the request's first block) over the replicas' stable names, so a
conversation's first turn lands where a restarted router would also send it; later turns follow the
conversation's own blocks through the index, which a restarted router rebuilds from the replicas'
block snapshots (`KVIndex.apply` with everything a replica holds).
"""

from __future__ import annotations

import hashlib
import statistics
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

from agentrt.errors import AgentrtError

POLICIES = ("kv-aware", "round-robin", "least-loaded")
OUTPUT_BLOCKS = 1  # blocks a request's output is budgeted in the load (the generated tail)


class RouterError(AgentrtError, ValueError):
    """A bad router setting or a request with no live replica to go to."""


class KVIndex:
    """Block hash -> replicas holding it, and the reverse, kept consistent."""

    def __init__(self) -> None:
        self.holders: dict[Hashable, set[str]] = {}
        self.by_replica: dict[str, set[Hashable]] = {}

    def apply(self, replica: str, stored: Iterable[Hashable] = (), removed: Iterable[Hashable] = ()) -> None:
        """Record a replica's block events: `removed` first, then `stored`."""
        mine = self.by_replica.setdefault(replica, set())
        for h in removed:
            if h in mine:
                mine.discard(h)
                owners = self.holders[h]
                owners.discard(replica)
                if not owners:
                    del self.holders[h]
        for h in stored:
            if h not in mine:
                mine.add(h)
                self.holders.setdefault(h, set()).add(replica)

    def drop(self, replica: str) -> None:
        """Forget everything a replica held (it died or was replaced)."""
        self.apply(replica, removed=list(self.by_replica.get(replica, ())))
        self.by_replica.pop(replica, None)

    def overlap(self, hashes: Sequence[Hashable]) -> dict[str, int]:
        """Replica -> number of leading blocks of `hashes` it holds (replicas holding none omitted)."""
        if not hashes:
            return {}
        active = set(self.holders.get(hashes[0], ()))
        out: dict[str, int] = {}
        for i, h in enumerate(hashes[1:], start=1):
            if not active:
                break
            owners = self.holders.get(h, set())
            for r in active - owners:
                out[r] = i
            active &= owners
        for r in active:
            out[r] = len(hashes)
        return out

    def num_blocks(self, replica: str) -> int:
        return len(self.by_replica.get(replica, ()))


@dataclass(slots=True)
class Load:
    """What a replica has in flight. Blocks are counted once however many in-flight requests share
    them (Dynamo's active-block count): requests on one prefix cost the replica that prefix once."""

    num_requests: int = 0  # requests in flight
    active: dict[Hashable, int] = field(default_factory=dict)  # prompt block hash -> in-flight requests on it
    num_private: int = 0  # blocks budgeted for the in-flight requests' outputs (shared by none)
    work: float = 0.0  # blocks sent here to compute (prompt misses + output budget), decayed; kept with balance_slack only

    @property
    def num_blocks(self) -> int:
        return len(self.active) + self.num_private

    def num_active_prefix(self, hashes: Sequence[Hashable]) -> int:
        """Leading blocks of `hashes` already active here. Hashes are chained, so an active block
        brings its whole prefix with it: the active ones form a leading run (binary search)."""
        lo, hi = 0, len(hashes)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if hashes[mid - 1] in self.active:
                lo = mid
            else:
                hi = mid - 1
        return lo


@dataclass(slots=True, frozen=True)
class Decision:
    replica: str
    overlap_blocks: int  # leading blocks of the request the chosen replica already holds


def rendezvous(key: str, replicas: Iterable[str]) -> list[str]:
    """Replicas ordered by highest-random-weight hashing of `key`: stable, and removing a replica
    moves only the keys that ranked it first."""
    def weight(r: str) -> bytes:
        return hashlib.blake2b(f"{key}|{r}".encode(), digest_size=8).digest()

    return sorted(replicas, key=weight, reverse=True)


@dataclass(slots=True)
class Router:
    """Routes requests over named replicas. Call `route` then `begin`/`end` around the request."""

    policy: str = "kv-aware"
    # Dynamo's default weight (blocks to prefill count as much as active blocks).
    overlap_weight: float = 1.0
    affinity_slack: int | None = 1  # None: the cost alone decides
    balance_slack: float | None = None  # kv-aware: leave holders past (1 + this) x the mean work; None: off
    work_half_life: float = 1024.0  # routed requests over which a replica's recorded work halves
    move_cost_factor: float = 2.0  # a holder leaves only past this x the blocks the move re-prefills
    index: KVIndex = field(default_factory=KVIndex)
    loads: dict[str, Load] = field(default_factory=dict)
    _turn: int = 0

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise RouterError(f"router policy must be one of {POLICIES}, got {self.policy!r}")
        if self.overlap_weight < 0:
            raise RouterError(f"overlap_weight must be >= 0, got {self.overlap_weight}")
        if self.affinity_slack is not None and self.affinity_slack < 0:
            raise RouterError(f"affinity_slack must be None or >= 0, got {self.affinity_slack}")
        if self.balance_slack is not None and self.balance_slack < 0:
            raise RouterError(f"balance_slack must be None or >= 0, got {self.balance_slack}")
        if self.work_half_life <= 0:
            raise RouterError(f"work_half_life must be > 0, got {self.work_half_life}")

    @property
    def replicas(self) -> list[str]:
        return sorted(self.loads)

    def add_replica(self, name: str) -> None:
        """Route to `name` too. A replica that joins a running cluster starts at the others' mean
        work, so it is not handed every new conversation until it catches up."""
        if name not in self.loads:
            works = [load.work for load in self.loads.values()]
            self.loads[name] = Load(work=statistics.fmean(works) if works else 0.0)

    def remove_replica(self, name: str) -> None:
        """Stop routing to `name` and forget its blocks (its in-flight requests are the caller's)."""
        self.loads.pop(name, None)
        self.index.drop(name)

    def route(self, hashes: Sequence[Hashable], session: str | None = None) -> Decision:
        """Pick a replica for a request whose prompt blocks are `hashes`. Raises RouterError when
        there is no replica."""
        names = self.replicas
        if not names:
            raise RouterError("no live engine replica to route to")
        overlap = self.index.overlap(hashes)
        if self.policy == "round-robin":
            name = names[self._turn % len(names)]
            self._turn += 1
        else:
            key = session if session is not None else str(hashes[0] if hashes else "")
            rank = {r: i for i, r in enumerate(rendezvous(key, names))}
            compete = self._affine(names, overlap) if self.policy == "kv-aware" else names
            name = min(compete, key=lambda r: (*self._cost(r, hashes, overlap.get(r, 0)), rank[r]))
        return Decision(name, overlap.get(name, 0))

    def _affine(self, names: list[str], overlap: dict[str, int]) -> list[str]:
        """Who competes under kv-aware: the holders of the longest prefix that have at most
        `affinity_slack` more requests in flight than the least busy replica; when none has, or
        when every replica holds that prefix (a new conversation: it has nothing of its own to
        keep), the least busy replicas. The slack is judged on the holder, not on the busiest
        replica: a conversation leaves its replica only when that replica is the busy one. With
        `balance_slack`, the least busy replica that has done the least work takes a new
        conversation, and a conversation whose holders have all done more than (1 + balance_slack)
        x the mean work moves there (least busy first: piling conversations on one replica, however
        little it has done, overflows its KV cache)."""
        if self.affinity_slack is None:
            return names
        in_flight = {r: self.loads[r].num_requests for r in names}
        fewest = min(in_flight.values())
        least_busy = [r for r in names if in_flight[r] == fewest]
        within = [r for r in names if in_flight[r] - fewest <= self.affinity_slack]  # within the request slack
        best = max(overlap.values(), default=0)
        keep = [r for r in within if overlap.get(r, 0) == best]
        new_conversation = sum(1 for r in names if overlap.get(r, 0) == best) == len(names)
        if self.balance_slack is None:
            return least_busy if new_conversation else keep or least_busy
        work = {r: self.loads[r].work for r in names}
        least = min(work[r] for r in within)
        least_worked = [r for r in within if work[r] == least]
        if new_conversation:
            return least_worked
        # Leave only past the slack, and when the holder did more than twice what the move costs
        # (the blocks the conversation re-prefills there): a replica busy mostly with this very
        # conversation would only hand its imbalance on (one early conversation is no imbalance).
        cost = best - max(overlap.get(r, 0) for r in least_worked)
        limit = max((1 + self.balance_slack) * statistics.fmean(work.values()), self.move_cost_factor * cost)
        if keep and all(work[r] > limit for r in keep):
            return least_worked
        return keep or least_busy

    def _cost(self, replica: str, hashes: Sequence[Hashable], overlap: int) -> tuple[float, ...]:
        load = self.loads[replica]
        if self.policy == "least-loaded":
            return (load.num_requests, load.num_blocks)
        # Dynamo's cost: blocks to prefill (weighted) + the replica's active blocks once this request
        # joins (its blocks already active there, and its output block, counted as they add).
        joined = load.num_blocks + len(hashes) - load.num_active_prefix(hashes) + OUTPUT_BLOCKS
        return (self.overlap_weight * (len(hashes) - overlap) + joined,)

    def begin(self, replica: str, hashes: Sequence[Hashable], num_output_blocks: int = OUTPUT_BLOCKS,
              cached_blocks: int = 0) -> None:
        """A request with prompt blocks `hashes` was sent to `replica`, which holds its first
        `cached_blocks` (`Decision.overlap_blocks`): the rest and the output are its work."""
        load = self.loads.get(replica)
        if load is None:
            return
        if self.balance_slack is not None:  # the work record serves the balance only
            keep = 0.5 ** (1.0 / self.work_half_life)
            for other in self.loads.values():
                other.work *= keep
            load.work += len(hashes) - min(cached_blocks, len(hashes)) + num_output_blocks
        load.num_requests += 1
        load.num_private += num_output_blocks
        for h in hashes:
            load.active[h] = load.active.get(h, 0) + 1

    def end(self, replica: str, hashes: Sequence[Hashable], num_output_blocks: int = OUTPUT_BLOCKS) -> None:
        """That request finished (or failed) on `replica`."""
        load = self.loads.get(replica)
        if load is None:
            return
        load.num_requests = max(0, load.num_requests - 1)
        load.num_private = max(0, load.num_private - num_output_blocks)
        for h in hashes:
            left = load.active.get(h, 0) - 1
            if left > 0:
                load.active[h] = left
            else:
                load.active.pop(h, None)
