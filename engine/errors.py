"""The engine's typed errors. Every error raised at the engine boundary is one of these."""

from __future__ import annotations


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class InvalidRequestError(EngineError, ValueError):
    """A request (prompt or sampling parameters) is malformed. Other requests are unaffected."""


class ModelLoadError(EngineError):
    """A checkpoint cannot be loaded: missing/unknown tensors, bad shapes, unsupported architecture."""


class OutOfKVCacheError(EngineError):
    """A single request cannot fit in the KV cache even with every other request preempted."""


class RequestFailedError(EngineError):
    """An engine step raised while this request was running: it was failed so that the engine could
    go on serving the others. The message carries the step's error."""


class KVTierError(EngineError):
    """A KV tier cannot be used safely (e.g. a disk tier folder owned by another user)."""


class KernelUnavailableError(EngineError, RuntimeError):
    """A CPU kernel was called where it cannot run (no C compiler, a CPU it is not built for, or a
    path needing AVX-512 on a CPU without it); callers check `available()` first."""
