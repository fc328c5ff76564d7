"""N-gram prompt-lookup drafting: propose the tokens that followed the latest earlier occurrence
of the sequence's last n tokens (n from `max_n` down to `min_n`), searching prompt and output.

Agent traffic copies a lot (ids, names, tool results, earlier turns), which this catches cheaply.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


class NgramDrafter:
    def __init__(self, max_n: int = 4, min_n: int = 2, window: int = 4096) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError(f"need 1 <= min_n <= max_n, got {min_n}, {max_n}")
        self.max_n, self.min_n, self.window = max_n, min_n, window

    def propose(self, token_ids: list[int], k: int) -> list[int]:
        """Up to `k` draft tokens continuing `token_ids` (empty when nothing matches)."""
        return self.propose_with_length(token_ids, k)[1]

    def propose_with_length(self, token_ids: list[int], k: int) -> tuple[int, list[int]]:
        """(length of the matched n-gram, up to `k` draft tokens); (0, []) when nothing matches."""
        tail = np.asarray(token_ids[-self.window :], dtype=np.int64)
        for n in range(self.max_n, self.min_n - 1, -1):
            if len(tail) <= n:
                continue
            pattern = tail[-n:]
            windows = sliding_window_view(tail[:-1], n)  # candidate n-grams, excluding the suffix itself
            hits = np.flatnonzero((windows == pattern).all(axis=1))
            if len(hits):
                start = int(hits[-1]) + n
                return n, tail[start : start + k].tolist()
        return 0, []
