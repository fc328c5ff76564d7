"""The one config dataclass of agentrt.ray: where the cluster is and what runs on it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agentrt.ray.router import POLICIES, RouterError

TOOL_RESOURCES = ("cpu", "storage", "gpu", "local")


@dataclass(slots=True)
class RayConfig:
    """How to scale out on Ray.

    `address` follows `ray.init`: "local" starts a local cluster, anything else ("auto",
    "ray://host:10001", "host:6379") joins one. `num_replicas` engine replicas serve every request,
    unless `num_prefill_replicas` and `num_decode_replicas` are both set (disaggregated: prefill
    replicas compute the prompt's KV, decode replicas import it and generate). `engine_options` are
    `engine.LLM` keyword arguments for every replica (None model = the shipped one).
    `tool_resources` maps tool names to "cpu", "storage" (the custom `storage` resource), "gpu" or
    "local" (in the driver: for tools bound to job state, such as a per-job database in a context
    variable); tools not named get `default_tool_resource`. A remote tool's result whose JSON is
    larger than `large_result_bytes` stays in Ray's object store and reaches the job as a HeldResult,
    released when the job ends (None: every result comes back to the driver; see agentrt.ray.tools).
    Raises RouterError (a ValueError) naming a bad value.
    """

    address: str = "local"
    num_replicas: int = 1
    num_prefill_replicas: int = 0
    num_decode_replicas: int = 0
    router: str = "kv-aware"
    overlap_weight: float = 1.0  # kv-aware cost: weight of blocks to prefill against active blocks
    affinity_slack: int | None = 1  # kv-aware: prefix affinity while in-flight requests differ by at most this
    balance_slack: float | None = None  # kv-aware: rebalance past (1 + this) x the mean work (0.15 for agent replays)
    num_cpus_per_replica: float = 1.0
    num_gpus_per_replica: float = 0.0
    engine_options: dict[str, Any] = field(default_factory=dict)
    max_retries: int = 2  # re-sends of a request whose replica died
    tool_resources: dict[str, str] = field(default_factory=dict)
    default_tool_resource: str = "cpu"
    num_cpus_per_tool: float = 1.0
    large_result_bytes: int | None = None
    object_store_memory: int | None = 200 * 2**20  # for a local cluster; None = Ray's default
    placement_group: bool | None = None  # None: a placement group only when replicas take GPUs

    def __post_init__(self) -> None:
        if self.router not in POLICIES:
            raise RouterError(f"router must be one of {POLICIES}, got {self.router!r}")
        if (self.num_prefill_replicas == 0) != (self.num_decode_replicas == 0):
            raise RouterError(
                f"prefill and decode replicas go together, got {self.num_prefill_replicas} prefill and "
                f"{self.num_decode_replicas} decode")
        for name in ("num_replicas", "num_prefill_replicas", "num_decode_replicas", "max_retries"):
            if getattr(self, name) < 0:
                raise RouterError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.num_replicas < 1 and not self.disaggregated:
            raise RouterError(f"num_replicas must be >= 1, got {self.num_replicas}")
        if self.large_result_bytes is not None and self.large_result_bytes < 0:
            raise RouterError(f"large_result_bytes must be None or >= 0, got {self.large_result_bytes}")
        bad = {t: r for t, r in (self.tool_resources | {"(default)": self.default_tool_resource}).items() if r not in TOOL_RESOURCES}
        if bad:
            raise RouterError(f"tool resources must be one of {TOOL_RESOURCES}, got {bad}")

    @property
    def disaggregated(self) -> bool:
        return self.num_prefill_replicas > 0

    @property
    def use_placement_group(self) -> bool:
        return self.placement_group if self.placement_group is not None else self.num_gpus_per_replica > 0
