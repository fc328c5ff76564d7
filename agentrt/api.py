"""The graph API: `@tool`, `@agent`, `@graph`, the `Context` agents receive, and the `Registry`.

Decorators only describe: they wrap a function in a Tool/Agent/Graph object that stays callable
as the plain function (handy in tests). Scheduling happens only when a job runs.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, get_type_hints

import msgspec

from agentrt.errors import GraphError, SchemaError, UnknownGraphError, UnknownToolError
from agentrt.types import FailurePolicy, Generation, HeldResult, RetryPolicy


def _signature_struct(fn: Callable[..., Any], name: str, skip_first: bool) -> type[msgspec.Struct]:
    """A msgspec Struct type with one field per parameter of `fn` (annotations required)."""
    hints = get_type_hints(fn)
    params = list(inspect.signature(fn).parameters.values())[1 if skip_first else 0 :]
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise GraphError(f"{name}: *args/**kwargs cannot be described by a schema")
        ann = hints.get(p.name, Any)
        fields.append((p.name, ann) if p.default is p.empty else (p.name, ann, p.default))
    return msgspec.defstruct(name, fields, kw_only=True, forbid_unknown_fields=True)


def _schema_of(struct: type[msgspec.Struct]) -> dict[str, Any]:
    """Inline JSON schema (no $refs) of a struct's fields."""
    (schema,), components = msgspec.json.schema_components([struct], ref_template="#/$defs/{name}")
    resolved = _inline(schema, components)
    resolved.pop("title", None)
    return resolved


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline(defs[node["$ref"].rsplit("/", 1)[1]], defs)
        out = {k: _inline(v, defs) for k, v in node.items() if k != "title"}
        if "enum" in out and "type" not in out and out["enum"] and all(isinstance(v, str) for v in out["enum"]):
            out = {"type": "string", **out}  # a Literal of strings: say its type, as OpenAI/pydantic schemas do
        return out
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def _first_paragraph(fn: Callable[..., Any]) -> str:
    return (inspect.getdoc(fn) or "").split("\n\n")[0].replace("\n", " ").strip()


@dataclass(slots=True, eq=False)
class Tool:
    """An agent-callable tool. `parameters` is the JSON schema of its arguments."""

    fn: Callable[..., Any]
    name: str
    description: str
    parameters: dict[str, Any]
    args_type: type[msgspec.Struct]
    is_async: bool
    cpu_bound: bool = False
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def schema(self) -> dict[str, Any]:
        """OpenAI function-calling format."""
        return {"type": "function", "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}

    def validate(self, args: dict[str, Any]) -> dict[str, Any]:
        """Check and convert arguments. Raises SchemaError naming the tool and the bad field."""
        if not isinstance(args, dict):
            raise SchemaError(f"tool {self.name!r}: arguments must be an object, got {type(args).__name__}")
        held = frozenset(k for k, v in args.items() if isinstance(v, HeldResult))
        try:
            converted = msgspec.convert(args, _holding(self.args_type, held) if held else self.args_type, strict=False)
        except msgspec.ValidationError as exc:
            raise SchemaError(f"tool {self.name!r}: {exc}") from exc
        return msgspec.structs.asdict(converted)


@functools.cache
def _holding(struct: type[msgspec.Struct], held: frozenset[str]) -> type[msgspec.Struct]:
    """`struct` with the `held` fields typed Any: a held result (the value another tool returned) is
    passed through as its handle and reaches the tool as that value."""
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for f in msgspec.structs.fields(struct):
        typ = Any if f.name in held else f.type
        if f.required:
            fields.append((f.name, typ))
        else:
            default = f.default if f.default is not msgspec.NODEFAULT else msgspec.field(default_factory=f.default_factory)
            fields.append((f.name, typ, default))
    return msgspec.defstruct(struct.__name__, fields, kw_only=True, forbid_unknown_fields=True)


def tool(
    fn: Callable[..., Any] | None = None, *, name: str | None = None, description: str | None = None,
    cpu_bound: bool = False, timeout: float | None = None, retry: RetryPolicy | None = None,
) -> Any:
    """Describe a (sync or async) typed function as a tool. Usable bare or with options."""

    def wrap(f: Callable[..., Any]) -> Tool:
        tname = name or f.__name__
        struct = _signature_struct(f, tname, skip_first=False)
        policy = retry or RetryPolicy()
        if timeout is not None:
            policy = RetryPolicy(policy.max_attempts, policy.backoff, timeout)
        return Tool(f, tname, description or _first_paragraph(f), _schema_of(struct), struct,
                    inspect.iscoroutinefunction(f), cpu_bound, policy)

    return wrap(fn) if fn is not None else wrap


@dataclass(slots=True, eq=False)
class Agent:
    fn: Callable[..., Awaitable[Any]]
    name: str
    description: str

    def __call__(self, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        return self.fn(*args, **kwargs)


def agent(fn: Callable[..., Any] | None = None, *, name: str | None = None) -> Any:
    """Describe an `async def f(ctx, ...)` as an agent (GraphError for a sync function)."""

    def wrap(f: Callable[..., Any]) -> Agent:
        if not inspect.iscoroutinefunction(f):
            raise GraphError(f"agent {f.__name__!r} must be an async function taking a Context")
        return Agent(f, name or f.__name__, _first_paragraph(f))

    return wrap(fn) if fn is not None else wrap


@dataclass(slots=True, eq=False)
class Graph:
    """A named entry point a job runs: `async def f(ctx, **inputs)`."""

    fn: Callable[..., Awaitable[Any]]
    name: str
    description: str
    inputs_type: type[msgspec.Struct]
    failure: FailurePolicy = FailurePolicy.CANCEL_SIBLINGS

    def __call__(self, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        return self.fn(*args, **kwargs)

    def validate(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Raises SchemaError naming the graph and the bad input."""
        try:
            converted = msgspec.convert(inputs, self.inputs_type, strict=False)
        except msgspec.ValidationError as exc:
            raise SchemaError(f"graph {self.name!r} inputs: {exc}") from exc
        return msgspec.structs.asdict(converted)


def graph(fn: Callable[..., Any] | None = None, *, name: str | None = None, failure: FailurePolicy = FailurePolicy.CANCEL_SIBLINGS) -> Any:
    """Describe an `async def f(ctx, **inputs)` as a graph."""

    def wrap(f: Callable[..., Any]) -> Graph:
        if not inspect.iscoroutinefunction(f):
            raise GraphError(f"graph {f.__name__!r} must be an async function")
        gname = name or f.__name__
        return Graph(f, gname, _first_paragraph(f), _signature_struct(f, gname, skip_first=True), failure)

    return wrap(fn) if fn is not None else wrap


class Handle(Protocol):
    """A spawned sub-agent; await it for its result."""

    def __await__(self) -> Any: ...


class Context(Protocol):
    """What an agent receives. Implemented by the executor (agentrt.context.JobContext)."""

    async def generate(
        self, messages: list[dict[str, Any]] | str | None = None, *, max_tokens: int = 256,
        temperature: float = 0.0, stop: list[str] | None = None, schema: Any = None,
        tools: list[Tool] | None = None, name: str = "generate",
    ) -> Generation:
        """Run an LLM call (a GPU task). With the context's session, `messages` are appended to it."""
        ...

    async def call(self, tool: Tool | str, /, **args: Any) -> Any:
        """Run a tool (a CPU task). Raises UnknownToolError, SchemaError or ToolError. On Ray with
        `large_result_bytes` set, a larger result comes back as a HeldResult (see `resolve`)."""
        ...

    async def resolve(self, value: Any) -> Any:
        """The value behind a HeldResult (fetched into this process now); any other value as is.
        Raises HeldResultError when the result cannot be reached."""
        ...

    def spawn(self, agent: Agent, *args: Any, **kwargs: Any) -> Handle:
        """Start a sub-agent now; returns an awaitable handle."""
        ...

    async def gather(self, *aws: Awaitable[Any]) -> list[Any]:
        """Await handles/awaitables concurrently; results in order."""
        ...

    async def interrupt(self, payload: Any = None) -> Any:
        """Suspend the job (status "interrupted", with `payload`) until it is resumed; returns the resume input."""
        ...


@dataclass(slots=True)
class Registry:
    """Tools, agents and graphs by name (the dags-folder convention: `load_path(folder)`)."""

    tools: dict[str, Tool] = field(default_factory=dict)
    agents: dict[str, Agent] = field(default_factory=dict)
    graphs: dict[str, Graph] = field(default_factory=dict)

    def register(self, obj: Tool | Agent | Graph) -> None:
        table: dict[str, Any] = self.tools if isinstance(obj, Tool) else self.agents if isinstance(obj, Agent) else self.graphs
        if obj.name in table and table[obj.name] is not obj:
            raise GraphError(f"two different objects named {obj.name!r}")
        table[obj.name] = obj

    def get_tool(self, name: str) -> Tool:
        if name not in self.tools:
            raise UnknownToolError(name, list(self.tools))
        return self.tools[name]

    def get_graph(self, name: str) -> Graph:
        if name not in self.graphs:
            raise UnknownGraphError(name, list(self.graphs))
        return self.graphs[name]

    def register_module(self, module: Any) -> None:
        for value in vars(module).values():
            if isinstance(value, Tool | Agent | Graph):
                self.register(value)

    def load_path(self, path: str | Path) -> None:
        """Import every .py file of a folder (or one file) and register what it defines."""
        path = Path(path)
        files = sorted(path.glob("*.py")) if path.is_dir() else [path]
        if not path.exists():
            raise GraphError(f"no such file or folder: {path}")
        for file in files:
            if file.name.startswith("_"):
                continue
            if (file.parent / "__init__.py").exists():
                # A package (like tools/): import it under its real name so that graphs importing it
                # share the same module (and the same Tool objects and context variables).
                root = str(file.parent.parent.resolve())
                if root not in sys.path:
                    sys.path.insert(0, root)
                self.register_module(importlib.import_module(f"{file.parent.name}.{file.stem}"))
                continue
            mod_name = f"agentrt_user.{file.parent.name}.{file.stem}"
            spec = importlib.util.spec_from_file_location(mod_name, file)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            spec.loader.exec_module(module)
            self.register_module(module)
