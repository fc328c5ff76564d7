"""Who may import whom (docs/architecture.md), checked by parsing every module's imports with ast:
every import statement counts, including imports inside functions and under TYPE_CHECKING.

- engine never imports agentrt (the engine is a library the runtime uses, not the reverse);
- engine/kernels imports only engine.kernels and engine.errors of the engine: kernels never import
  model code (engine.model, engine.moe, ...), the model and MoE layers import kernels;
- engine.moe never imports engine.model (the layers use the MoE code, not the reverse), and
  agentrt.context never imports agentrt.executor (the executor creates contexts; both share agentrt.jobs);
- policy modules (the schedulers, the KV bookkeeping, the job DAG) import no torch, anyio or zmq;
- the package-level import graph (engine.* and agentrt.* packages) has no cycles.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
POLICY = ["engine/scheduler.py", "engine/kv/block_pool.py", "engine/kv/radix.py", "engine/kv/naive.py", "engine/kv/pins.py",
          "agentrt/dag.py", "agentrt/scheduler.py"]
# engine/kv/tiers.py is not policy: it holds KV tensors (the host and disk tiers) and so imports torch.
HEAVY = ("torch", "anyio", "zmq")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module `path` imports (absolute names; `from a import b` counts as a and a.b)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def modules(*packages: str) -> dict[str, set[str]]:
    return {module_name(p): imports(p) for pkg in packages for p in sorted((ROOT / pkg).rglob("*.py"))}


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


ALL = modules("engine", "agentrt")


def offenders(rule_modules: str, forbidden: tuple[str, ...], allowed: tuple[str, ...] = ()) -> list[str]:
    return sorted(f"{m} imports {i}" for m, found in ALL.items() if within(m, rule_modules) for i in found
                  if any(within(i, f) for f in forbidden) and not any(within(i, a) for a in allowed))


def test_the_parser_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "mod.py").write_text("from . import sibling\ndef f():\n    import torch.nn\n    from .other import x\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert imports(pkg / "mod.py") >= {"pkg.sibling", "torch.nn", "pkg.other", "pkg.other.x"}
    finally:
        ROOT = saved


def test_engine_never_imports_agentrt() -> None:
    assert offenders("engine", ("agentrt",)) == []


def test_kernels_import_no_model_code() -> None:
    assert offenders("engine.kernels", ("engine",), allowed=("engine.kernels", "engine.errors")) == []


def test_moe_never_imports_the_model_and_contexts_never_import_the_executor() -> None:
    assert offenders("engine.moe", ("engine.model",)) == []
    assert offenders("agentrt.context", ("agentrt.executor",)) == []


@pytest.mark.parametrize("path", POLICY)
def test_policy_modules_import_no_torch_anyio_or_zmq(path: str) -> None:
    found = imports(ROOT / path)
    assert sorted(i for i in found if any(within(i, h) for h in HEAVY)) == []


def test_packages_import_each_other_without_cycles() -> None:
    """Edges between the second-level units (engine.model, engine.kernels, engine.core, agentrt.jobs,
    ...; the package __init__s only re-export); a cycle means two units each need the other's code
    and should share a smaller module instead."""
    def unit(name: str) -> str | None:
        parts = name.split(".")
        return ".".join(parts[:2]) if parts[0] in ("engine", "agentrt") and len(parts) >= 2 else None

    edges: dict[str, set[str]] = {}
    for m, found in ALL.items():
        src = unit(m)
        if src is not None:
            edges.setdefault(src, set()).update(d for d in map(unit, found) if d is not None and d != src)
    edges = {src: {d for d in dsts if d in ALL or any(k.startswith(d + ".") for k in ALL)} for src, dsts in edges.items()}
    state: dict[str, int] = {}

    def visit(p: str, path: list[str]) -> None:
        state[p] = 1
        for q in sorted(edges.get(p, ())):
            assert state.get(q) != 1, f"import cycle: {' -> '.join([*path, p, q])}"
            if q not in state:
                visit(q, [*path, p])
        state[p] = 2

    for p in sorted(edges):
        if p not in state:
            visit(p, [])
    assert "engine.kernels" in edges["engine.model"] and "engine.jobs" not in edges
