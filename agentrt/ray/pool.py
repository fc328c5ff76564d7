"""A pool of engine replicas as Ray actors, with the router that picks among them.

A replica that dies is replaced under the same name (so rendezvous affinity still points at its
slot); the router forgets the dead replica's blocks. Replicas that take GPUs are placed with a
placement group (one bundle per replica) so a replacement lands in its predecessor's bundle.
"""

from __future__ import annotations

import logging
from typing import Any

import ray
from ray.util.placement_group import placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from agentrt.ray.config import RayConfig
from agentrt.ray.replica import EngineReplica, ReplicaInfo
from agentrt.ray.router import Router

logger = logging.getLogger(__name__)


class ReplicaPool:
    """`num` replicas named `{role}-{i}`. `start()` blocks until they are up."""

    def __init__(self, role: str, num: int, config: RayConfig) -> None:
        self.role = role
        self.config = config
        self.names = [f"{role}-{i}" for i in range(num)]
        self.router = Router(config.router, config.overlap_weight, config.affinity_slack, config.balance_slack)
        self.handles: dict[str, Any] = {}
        self.info: ReplicaInfo | None = None
        self.num_replacements = 0
        self._group: Any = None
        self._remote = ray.remote(EngineReplica)

    def start(self) -> None:
        if self.config.use_placement_group:
            wanted = {"CPU": self.config.num_cpus_per_replica, "GPU": self.config.num_gpus_per_replica}
            bundle = {k: v for k, v in wanted.items() if v > 0}  # Ray refuses zero-sized bundle entries
            self._group = placement_group([bundle] * len(self.names), strategy="PACK")
            ray.get(self._group.ready())
        for name in self.names:
            self.handles[name] = self._create(name)
            self.router.add_replica(name)
        infos = ray.get([h.info.remote() for h in self.handles.values()])
        self.info = infos[0]
        logger.info("%d %s replicas up on nodes %s", len(infos), self.role, sorted({i.node_id[:8] for i in infos}))

    def _create(self, name: str) -> Any:
        options: dict[str, Any] = {"num_cpus": self.config.num_cpus_per_replica, "num_gpus": self.config.num_gpus_per_replica}
        if self._group is not None:
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(self._group, self.names.index(name))
        return self._remote.options(**options).remote(name, self.config.engine_options)

    def replace(self, name: str, dead: Any) -> None:
        """Replace replica `name` if `dead` is still its handle (many failed requests may report the
        same death; only the first replaces). The new replica starts empty."""
        current = self.handles.get(name)
        if current is None or current is not dead:
            return
        try:
            ray.kill(current, no_restart=True)
        except Exception:  # already gone
            pass
        self.router.index.drop(name)
        self.handles[name] = self._create(name)
        self.num_replacements += 1
        logger.warning("engine replica %s died; replaced it", name)

    async def resync(self) -> None:
        """Rebuild the router's index from every replica's cached blocks (after a router restart)."""
        for name, handle in self.handles.items():
            blocks = await handle.snapshot.remote()
            self.router.index.drop(name)
            self.router.index.apply(name, stored=blocks)

    @property
    def kv_capacity_tokens(self) -> int:
        assert self.info is not None
        return self.info.kv_capacity_tokens * len(self.names)

    @property
    def max_batch(self) -> int:
        assert self.info is not None
        return self.info.max_batch * len(self.names)

    def shutdown(self) -> None:
        for handle in self.handles.values():
            ray.kill(handle, no_restart=True)
        self.handles.clear()
        if self._group is not None:
            ray.util.remove_placement_group(self._group)
            self._group = None
