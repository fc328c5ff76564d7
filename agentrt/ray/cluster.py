"""`RayCluster`: connect to (or start) a Ray cluster, start engine replicas, hand out the runtime's
EngineClient and ToolExecutor for it.

    with RayCluster(RayConfig(address="local", num_replicas=2)) as cluster:
        runtime = cluster.runtime(registry)
        result = anyio.run(runtime.run_job, JobSpec(graph="airline_support", inputs={...}))
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import ray

from agentrt.ray.client import RayEngineClient
from agentrt.ray.config import RayConfig
from agentrt.ray.pool import ReplicaPool
from agentrt.ray.tools import RayToolExecutor

logger = logging.getLogger(__name__)


class RayCluster:
    """Engine replicas and tool workers on Ray. `start()` (or `with`) connects and starts replicas;
    `shutdown()` stops them (and the local cluster, if this object started it)."""

    def __init__(self, config: RayConfig | None = None) -> None:
        self.config = config or RayConfig()
        self.pool: ReplicaPool | None = None
        self.prefill_pool: ReplicaPool | None = None
        self.engine: RayEngineClient | None = None
        self.tools: RayToolExecutor | None = None
        self._started_ray = False

    @classmethod
    def from_cli(cls, address: str, engine_replicas: int, prefill_replicas: int, decode_replicas: int, router: str,
                 model: Any = None) -> RayCluster:
        """The cluster `agentrt serve/run --ray ADDRESS ...` asks for, started. Tools stay in the
        driver: the shipped graphs give their tools per-job state (the airline database)."""
        options = {"model": str(model)} if model is not None else {}
        config = RayConfig(address=address, num_replicas=engine_replicas, num_prefill_replicas=prefill_replicas,
                           num_decode_replicas=decode_replicas, router=router, engine_options=options,
                           default_tool_resource="local")
        return cls(config).start()

    def start(self) -> RayCluster:
        cfg = self.config
        if not ray.is_initialized():
            self._init_ray()
        if cfg.disaggregated:
            self.prefill_pool = ReplicaPool("prefill", cfg.num_prefill_replicas, cfg)
            self.prefill_pool.start()
            self.pool = ReplicaPool("decode", cfg.num_decode_replicas, cfg)
        else:
            self.pool = ReplicaPool("replica", cfg.num_replicas, cfg)
        self.pool.start()
        self.engine = RayEngineClient(self.pool, prefill=self.prefill_pool, max_retries=cfg.max_retries)
        self.tools = RayToolExecutor(cfg.tool_resources, cfg.num_cpus_per_tool, cfg.default_tool_resource,
                                     cfg.large_result_bytes)
        return self

    def _init_ray(self) -> None:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        if self.config.address == "local":
            # Workers import graphs and tools by module path: give them the driver's import path.
            path = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
            # address="local": always a new cluster, never one that happens to run on this machine.
            ray.init(address="local", object_store_memory=self.config.object_store_memory, include_dashboard=False,
                     runtime_env={"env_vars": {"PYTHONPATH": path}}, logging_level=logging.WARNING)
            self._started_ray = True
        else:
            ray.init(address=self.config.address, logging_level=logging.WARNING)

    def runtime(self, registry: Any, **kwargs: Any) -> Any:
        """A Runtime whose LLM calls go to the replicas and whose tool calls run as Ray tasks."""
        from agentrt.executor import Runtime

        if self.engine is None:
            self.start()
        return Runtime(registry, self.engine, tools=self.tools, **kwargs)

    def shutdown(self) -> None:
        if self.tools is not None:
            self.tools.close()
        for pool in (self.pool, self.prefill_pool):
            if pool is not None:
                pool.shutdown()
        self.pool = self.prefill_pool = self.engine = None
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False

    def __enter__(self) -> RayCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
