"""Scale-out on Ray (`pip install agentrt[ray]`): engine replicas as actors behind a KV-aware
router, tool calls as Ray tasks placed by resource, disaggregated prefill/decode.

The router policy (`agentrt.ray.router`) is pure and imports without Ray; the rest needs it.
"""

from __future__ import annotations

from typing import Any

from agentrt.ray.config import RayConfig
from agentrt.ray.router import POLICIES, KVIndex, Router, RouterError

__all__ = ["POLICIES", "KVIndex", "RayCluster", "RayConfig", "RayEngineClient", "RayToolExecutor", "Router", "RouterError"]


def __getattr__(name: str) -> Any:
    if name == "RayCluster":
        from agentrt.ray.cluster import RayCluster

        return RayCluster
    if name == "RayEngineClient":
        from agentrt.ray.client import RayEngineClient

        return RayEngineClient
    if name == "RayToolExecutor":
        from agentrt.ray.tools import RayToolExecutor

        return RayToolExecutor
    raise AttributeError(f"module 'agentrt.ray' has no attribute {name!r}")
