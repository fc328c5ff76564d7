"""Per-CPU choice of how the C kernels split their work: a short autotune at first build, cached with it.

What is tuned: a kernel family's *schedule* only: how its output columns, heads and query rows are
cut into work items, the order threads take them in, and the size below which one thread runs a
call alone (OpenMP's fork costs more than it saves). Each knob is a runtime argument of the C
kernel (an int64 array, `Kernels.tune`), so the candidates share one compiled library: no variant
is compiled per tile shape. What is not tuned: anything that changes the order of a sum. Every
candidate must give bitwise the same outputs as the defaults (checked here before timing, and by
tests/engine/test_cpu_autotune.py); above all the attention kernel's tiled-vs-row threshold stays
fixed (`attention.TILED_MIN_ROWS`): its two paths round differently, and a token must come out of a
decode step exactly as it does out of a verification step for greedy speculation to stay lossless.

How: the family's workloads (decode- and verification-sized calls) run under every candidate in
interleaved rounds, so a slow phase of a shared machine hits all of them alike; after a screening
pass the best few and the defaults are timed again head to head, and a candidate replaces the
defaults only when its median time (each workload weighed alike) is at least MARGIN faster. That
keeps noise from picking a "winner" among equals. It takes about BUDGET_S per family on first use;
when one screening round overruns it BUSY_FACTOR times (an oversubscribed machine), the defaults run
and nothing is cached. The choice reflects the load at tuning time: OpenMP's fork and barriers cost
far more when other processes hold the cores, so a tune on a busy machine favours fewer threads and
static schedules; re-tune on the machine as it will serve (AGENTRT_AUTOTUNE=force).

The choice is cached beside the library as `<library>.tune.json`, so it is keyed like the build
(kernel sources, flags, compiler, CPU model and instruction-set flags), per torch thread count; the
next process reads it back instead of tuning. AGENTRT_AUTOTUNE=0 turns tuning off (the defaults
run, nothing is read or written), AGENTRT_AUTOTUNE=force tunes again and overwrites the cache;
`retune(kernels)` does the same from code.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

ENV = "AGENTRT_AUTOTUNE"
BUDGET_S = 1.0  # timing budget per kernel family (the bitwise check and workload set-up come on top)
MARGIN = 0.03  # a candidate replaces the defaults only when at least this much faster
BUSY_FACTOR = 4  # screening that overruns the budget this many times means a busy machine: no choice made
FINALISTS = 3  # candidates timed again against the defaults after screening
SAMPLE_S = 2e-4  # each timed sample repeats a workload until it lasts about this long

Params = tuple[int, ...]
Workload = Callable[[int], torch.Tensor]  # runs the kernel with the tune array at this address; returns its output


@dataclass(frozen=True, slots=True)
class Space:
    """A family's knobs (names, for logs and the cache), their defaults, and the candidate settings
    (the defaults among them); `workloads` builds named calls to time (it allocates, so only when tuning)."""

    knobs: tuple[str, ...]
    default: Params
    candidates: tuple[Params, ...]
    workloads: Callable[[], dict[str, Workload]]

    def __post_init__(self) -> None:
        if self.default not in self.candidates:
            raise ValueError(f"the defaults {self.default} must be one of the candidates")
        if any(len(c) != len(self.knobs) for c in self.candidates):
            raise ValueError(f"every candidate sets the {len(self.knobs)} knobs {self.knobs}")


@dataclass(frozen=True, slots=True)
class Choice:
    """The settings in force and where they came from: "default" (tuning off or failed), "cache", "tuned"."""

    params: Params
    source: str
    speedup: float = 1.0  # the defaults' time over the chosen one's, as measured when tuning
    times: dict[str, float] = field(default_factory=dict)  # candidate -> relative time, when tuned here


def mode() -> str:
    """"off", "force" or "on" (the default), from AGENTRT_AUTOTUNE."""
    value = os.environ.get(ENV, "").strip().lower()
    if value in ("0", "off", "false", "no"):
        return "off"
    return "force" if value in ("force", "retune") else "on"


def cache_path(library: str) -> Path:
    return Path(library + ".tune.json")


def _trusted(path: Path) -> bool:
    st = os.lstat(path)
    return st.st_uid == os.getuid() and not st.st_mode & 0o022 and not os.path.islink(path)


def entry_key(cpu: str, threads: int) -> str:
    """Where a choice sits in the cache file: the CPU model (machines with the same instruction sets
    share a build, not necessarily the best split) and the thread count."""
    return f"{cpu} | {threads} threads"


def load(library: str, space: Space, key: str) -> Params | None:
    """The cached choice under `key` (see entry_key) for this library, if any (ignored unless it is
    one of the candidates and the file is private to this user)."""
    path = cache_path(library)
    try:
        if not _trusted(path):
            return None
        entry = json.loads(path.read_text()).get("choices", {}).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    params = tuple(entry["params"]) if isinstance(entry, dict) and isinstance(entry.get("params"), list) else None
    return params if params in space.candidates else None


def save(library: str, space: Space, key: str, choice: Choice) -> None:
    """Add the choice under `key` to the library's cache file (atomically; last writer wins)."""
    path = cache_path(library)
    try:
        data = json.loads(path.read_text()) if path.exists() and _trusted(path) else {}
    except (OSError, ValueError):
        data = {}
    data.setdefault("choices", {})[key] = {
        "params": list(choice.params), "knobs": list(space.knobs), "speedup": round(choice.speedup, 4)}
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except OSError as exc:
        logger.warning("could not cache the autotune choice in %s (%s)", path, exc)


def choose(name: str, library: str, space: Space, cpu: str, threads: int, force: bool = False) -> Choice:
    """The settings for this family on this CPU and thread count: defaults when tuning is off, else
    the cached choice, else (or when forced) a fresh tune, cached."""
    how = mode()
    if how == "off":
        return Choice(space.default, "default")
    key = entry_key(cpu, threads)
    if not force and how != "force":
        cached = load(library, space, key)
        if cached is not None:
            logger.debug("autotune %s: cached choice %s", name, dict(zip(space.knobs, cached, strict=True)))
            return Choice(cached, "cache")
    choice = tune(name, space, threads)
    if choice.source == "tuned":  # not a busy machine's "defaults kept": the next process tries again
        save(library, space, key, choice)
    return choice


def _address(params: Params) -> tuple[ctypes.Array[ctypes.c_int64], int]:
    arr = (ctypes.c_int64 * len(params))(*params)
    return arr, ctypes.addressof(arr)


def identical(space: Space, workloads: dict[str, Workload], candidates: Sequence[Params]) -> list[Params]:
    """The candidates whose every output equals the defaults' bitwise (the others are dropped, with a warning)."""
    keep, ref_arr = [], _address(space.default)
    reference = {n: w(ref_arr[1]).clone() for n, w in workloads.items()}
    for c in candidates:
        arr = _address(c)
        if all(torch.equal(w(arr[1]), reference[n]) for n, w in workloads.items()):
            keep.append(c)
        else:
            logger.warning("autotune: candidate %s changes the kernel's outputs; not used", c)
    return keep


def _sample(work: Workload, address: int, reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        work(address)
    return (time.perf_counter() - start) / reps


def _rounds(workloads: dict[str, Workload], reps: dict[str, int], candidates: Sequence[Params],
            seconds: float, min_rounds: int) -> dict[Params, dict[str, list[float]]]:
    """Time every candidate on every workload in interleaved rounds (rotating the order) for `seconds`."""
    arrays = {c: _address(c) for c in candidates}
    samples: dict[Params, dict[str, list[float]]] = {c: {n: [] for n in workloads} for c in candidates}
    deadline, r = time.perf_counter() + seconds, 0
    while r < min_rounds or time.perf_counter() < deadline:
        order = list(candidates[r % len(candidates):]) + list(candidates[:r % len(candidates)])
        for c in order:
            for n, w in workloads.items():
                samples[c][n].append(_sample(w, arrays[c][1], reps[n]))
        r += 1
    return samples


def _relative(samples: dict[Params, dict[str, list[float]]], default: Params) -> dict[Params, float]:
    """Each candidate's mean over workloads of its median time over the defaults' (1.0: as fast)."""
    base = {n: statistics.median(s) for n, s in samples[default].items()}
    return {c: statistics.fmean(statistics.median(s) / base[n] for n, s in per.items()) for c, per in samples.items()}


def tune(name: str, space: Space, threads: int, budget_s: float | None = None) -> Choice:
    """Measure the candidates (see the module doc) for `budget_s` (default BUDGET_S) and return the
    fastest, or the defaults unless one is at least MARGIN faster."""
    started, budget_s = time.perf_counter(), BUDGET_S if budget_s is None else budget_s
    workloads = space.workloads()
    candidates = identical(space, workloads, space.candidates)
    if space.default not in candidates:  # the kernel is not even deterministic: nothing can be compared
        return Choice(space.default, "default")
    ref = _address(space.default)
    reps = {n: max(1, round(SAMPLE_S / max(_sample(w, ref[1], 3), 1e-7))) for n, w in workloads.items()}
    logger.info("autotune %s: %d candidates x %d workloads (%s) on %d threads, ~%.1f s", name, len(candidates),
                len(workloads), ", ".join(workloads), threads, budget_s)
    screening = time.perf_counter()
    screen = _relative(_rounds(workloads, reps, candidates, budget_s / 2, 1), space.default)
    if (took := time.perf_counter() - screening) > BUSY_FACTOR * budget_s:
        logger.warning("autotune %s: screening took %.1f s, not %.1f (the machine is busy): defaults kept, not cached; "
                       "tune on a quieter machine with %s=force", name, took, budget_s / 2, ENV)
        return Choice(space.default, "default")
    finalists = sorted((c for c in candidates if c != space.default), key=screen.__getitem__)[:FINALISTS]
    final = _relative(_rounds(workloads, reps, [space.default, *finalists], budget_s / 2, 2), space.default)
    best = min(final, key=final.__getitem__)
    if final[best] > 1.0 - MARGIN:
        best = space.default
    choice = Choice(best, "tuned", 1.0 / final[best], {str(c): round(t, 4) for c, t in final.items()})
    logger.info("autotune %s: %s (%.2fx the defaults %s) in %.1f s", name, dict(zip(space.knobs, best, strict=True)),
                choice.speedup, space.default, time.perf_counter() - started)
    return choice
