"""An EngineClient that loads the model on first use, so tool-only graphs never load it.

`agentrt run` uses it: a graph that never calls `ctx.generate` runs without the model (and without
importing torch's model code); the first LLM call loads the model and then widens the runtime's GPU
pool limits to what the loaded engine can batch and hold.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


class LazyEngine:
    """Wraps the EngineClient `make_engine(model, llm_url, llm_model)` builds (the embedded engine, or a
    remote OpenAI-compatible one), built on the first attribute use. `on_load(engine)` runs once
    after loading (e.g. to set pool limits); `loaded` says whether the model was ever loaded."""

    def __init__(self, model: Path | str | None = None, on_load: Callable[[Any], None] | None = None,
                 llm_url: str | None = None, llm_model: str | None = None) -> None:
        self._model, self._llm_url, self._llm_model = model, llm_url, llm_model
        self._on_load = on_load
        self._engine: Any = None
        self._lock = threading.Lock()
        self.load_seconds = 0.0  # how long loading the model took (inside the first LLM call)

    @property
    def loaded(self) -> bool:
        return self._engine is not None

    def load(self) -> Any:
        """The wrapped EmbeddedEngine, loading the model the first time. Raises what LLM() raises."""
        with self._lock:
            if self._engine is None:
                from agentrt.backends import make_engine

                start = time.perf_counter()
                self._engine = make_engine(self._model, self._llm_url, self._llm_model)
                self.load_seconds = time.perf_counter() - start
                if self._on_load is not None:
                    self._on_load(self._engine)
        return self._engine

    def close(self) -> None:
        """Close the engine if it was loaded."""
        if self._engine is not None:
            from agentrt.backends import close_engine

            close_engine(self._engine)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.load(), name)


def widen_gpu_limits(runtime: Any) -> Callable[[Any], None]:
    """An `on_load` that gives `runtime`'s GPU pool the loaded engine's batch size and KV capacity."""

    def apply(engine: Any) -> None:
        sched = runtime.scheduler
        sched.limits = dataclasses.replace(sched.limits, gpu=engine.max_batch(), gpu_tokens=engine.kv_capacity_tokens())

    return apply
