"""N-gram prompt-lookup drafting: propose the tokens that followed the latest earlier occurrence
of the sequence's last n tokens (n from `max_n` down to `min_n`), searching prompt and output.

Agent traffic copies a lot (ids, names, tool results, earlier turns), which this catches cheaply.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class NgramDrafter:
    def __init__(self, max_n: int = 4, min_n: int = 2, window: int = 4096) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError(f"need 1 <= min_n <= max_n, got {min_n}, {max_n}")
        self.max_n, self.min_n, self.window = max_n, min_n, window

    def propose(self, token_ids: list[int], k: int) -> list[int]:
        """Up to `k` draft tokens continuing `token_ids` (empty when nothing matches)."""
        return self.propose_with_length(token_ids, k)[1]

    def propose_scored(self, token_ids: Sequence[int], k: int) -> tuple[list[int], list[float]]:
        """(up to `k` draft tokens, the estimated chance that each draft prefix is right): a match
        of n tokens counts as confidence n / (n + 1) per drafted token."""
        n, draft = self.propose_with_length(token_ids, k)
        confidence = n / (n + 1)
        return draft, [confidence ** (i + 1) for i in range(len(draft))]

    def propose_with_length(self, token_ids: Sequence[int], k: int) -> tuple[int, list[int]]:
        """(length of the matched n-gram, up to `k` draft tokens); (0, []) when nothing matches.

        The earlier positions holding the last token are the candidates; each is extended
        backwards (vectorised over candidates) to its match length, capped at `max_n`. The
        longest match wins, the latest among equals: the same answer as trying n = max_n down to
        min_n, at one pass over the window plus a few per candidate."""
        tail = np.asarray(token_ids[-self.window :], dtype=np.int64)
        last = len(tail) - 1
        if last < self.min_n:
            return 0, []
        ends = np.flatnonzero(tail[:last] == tail[last])  # n-grams ending here match in their last token
        if not len(ends):
            return 0, []
        length = np.ones(len(ends), dtype=np.int64)
        alive = np.ones(len(ends), dtype=bool)
        for back in range(1, self.max_n):
            pos = ends - back
            alive &= pos >= 0
            alive[alive] &= tail[pos[alive]] == tail[last - back]
            if not alive.any():
                break
            length += alive
        n = int(length.max())
        if n < self.min_n:
            return 0, []
        start = int(ends[np.flatnonzero(length == n)[-1]]) + 1
        return n, tail[start : start + k].tolist()
