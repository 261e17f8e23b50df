"""Exponential backoff with jitter, so that a fleet does not reconnect in lockstep."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """``min_s * 2**attempt`` capped at ``max_s``, then scaled by a random 0.5-1.0."""

    min_s: float
    max_s: float

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before retry number ``attempt`` (0 for the first retry)."""
        ceiling = min(self.max_s, self.min_s * 2.0 ** min(attempt, 32))
        return ceiling * (0.5 + 0.5 * rng.random())
