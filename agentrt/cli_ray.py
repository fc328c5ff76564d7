"""`--ray ADDRESS|local` for `agentrt run` and `serve`: engine replicas on a Ray cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import typer

from agentrt import cli_output as out


class RayOptions(NamedTuple):
    """`--ray ADDRESS|local` and its replica/router options (address None: no Ray)."""

    address: str | None
    engine_replicas: int
    prefill_replicas: int
    decode_replicas: int
    router: str


def ray_cluster(opts: RayOptions, model: Path | None, llm_url: str | None) -> Any:
    """The started RayCluster for `--ray`, or None without it."""
    if opts.address is None:
        return None
    if llm_url is not None:
        raise typer.BadParameter("--ray runs engine replicas of a local model; it cannot be combined with --llm-url",
                                 param_hint="--ray")
    from agentrt.ray import RayCluster

    with out.err.status("starting Ray engine replicas"):
        return RayCluster.from_cli(opts.address, opts.engine_replicas, opts.prefill_replicas, opts.decode_replicas,
                                   opts.router, model)
