"""How many CPU kernel threads a step should use on a machine other processes also load (pure Python).

Why: the C kernels (and torch's CPU ops) run as OpenMP teams whose threads meet at a barrier after
every parallel loop. When another process takes one of the cores, the thread it displaced stalls
every barrier of the step until the OS runs it again, while its partner spins at the barrier and
takes the other core away from it too. On the 2-core benchmark machine at load average ~10, a dense
qwen3 decode step at batch 16 took 1,500 ms on 2 threads and 236 ms on 1 (docs/benchmarks.md).
`ThreadShedder` drops to as many threads as there are cores not busy with other processes, judged
from the number of runnable threads in /proc/loadavg (smoothed over steps), and returns to all of
them when the machine is quiet. The kernels' sums do not depend on the thread count, so neither do
the outputs. Where /proc/loadavg does not exist it keeps every thread.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

LOADAVG = Path("/proc/loadavg")
SMOOTHING = 0.3  # weight of the newest reading in the running estimate of other runnable threads


def runnable_threads(path: Path = LOADAVG) -> int | None:
    """Threads runnable on this machine now (the fourth field of /proc/loadavg, this process's
    included), or None where that cannot be read."""
    try:
        return int(path.read_bytes().split()[3].split(b"/")[0])
    except (OSError, ValueError, IndexError):
        return None


def num_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class ThreadShedder:
    """Per step: `threads(own)` -> the kernel threads to use, given `own`, the threads this
    process ran the previous step with (they may still be runnable: OpenMP workers spin a while
    after a loop). Never more than `max_threads`, never fewer than 1."""

    def __init__(self, max_threads: int, cpus: int | None = None, read: Callable[[], int | None] = runnable_threads) -> None:
        self.max_threads = max(1, max_threads)
        self.cpus = cpus if cpus is not None else num_cpus()
        self._read = read
        self.others = 0.0  # smoothed count of runnable threads that are not ours

    def threads(self, own: int) -> int:
        n = self._read()
        if n is None or self.max_threads == 1:
            return self.max_threads
        self.others += SMOOTHING * (max(0, n - own) - self.others)
        free = self.cpus - round(self.others)
        return max(1, min(self.max_threads, free))
