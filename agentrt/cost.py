"""The cost model: turns measured resource use into money.

Prices are configurable; the defaults are round public-cloud figures (an H100-class accelerator hour,
a vCPU hour, a GB-hour of RAM and of local SSD) and are meant to be overridden per deployment.
Costs are computed on leaf spans (LLM calls, tool calls); parents only sum their leaves.
"""

from __future__ import annotations

from dataclasses import dataclass

GB = 1 << 30
HOUR = 3600.0


@dataclass(slots=True, frozen=True)
class CostModel:
    """Prices in USD. All must be >= 0 (ValueError otherwise)."""

    usd_per_device_hour: float = 2.50
    usd_per_cpu_hour: float = 0.04
    usd_per_gb_hour_host: float = 0.005
    usd_per_gb_hour_disk: float = 0.0002

    def __post_init__(self) -> None:
        for name in ("usd_per_device_hour", "usd_per_cpu_hour", "usd_per_gb_hour_host", "usd_per_gb_hour_disk"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def llm_call(self, device_seconds: float, kv_byte_seconds_host: float = 0.0, kv_byte_seconds_disk: float = 0.0) -> float:
        """USD of one LLM call: its share of device time plus KV held in the host and disk tiers.

        (KV held on the device is already paid for by the device-hour price.)"""
        return (
            device_seconds / HOUR * self.usd_per_device_hour
            + kv_byte_seconds_host / GB / HOUR * self.usd_per_gb_hour_host
            + kv_byte_seconds_disk / GB / HOUR * self.usd_per_gb_hour_disk
        )

    def tool_call(self, cpu_seconds: float) -> float:
        """USD of one tool call: its CPU time."""
        return cpu_seconds / HOUR * self.usd_per_cpu_hour
