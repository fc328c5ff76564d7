"""The vocabulary's arithmetic: Usage.add sums every field (it is spelled out field by field)."""

from __future__ import annotations

from agentrt.types import Usage


def test_usage_add_sums_every_field() -> None:
    total = Usage()
    one = Usage(**{name: i + 1 for i, name in enumerate(Usage.__struct_fields__)})
    total.add(one)
    total.add(one)
    assert all(getattr(total, name) == 2 * (i + 1) for i, name in enumerate(Usage.__struct_fields__))
