"""Event ids: UUIDv7 (RFC 9562), sortable by creation time, unique across devices.

An event keeps its id across every retry and restart, so the hub can deduplicate.
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from collections.abc import Callable

_UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def uuid7_from(unix_ms: int, counter: int, random_tail: int) -> str:
    """Build a UUIDv7 string from its parts.

    Args:
        unix_ms: Milliseconds since the epoch (48 bits).
        counter: 12-bit sub-millisecond counter (``rand_a``), keeps ids of one
            millisecond in creation order.
        random_tail: 62 random bits (``rand_b``).
    """
    value = (unix_ms & (2**48 - 1)) << 80
    value |= 0x7 << 76
    value |= (counter & 0xFFF) << 64
    value |= 0b10 << 62
    value |= random_tail & (2**62 - 1)
    return str(uuid.UUID(int=value))


def is_event_id(text: str) -> bool:
    """Whether ``text`` is a lower-case UUIDv7 string."""
    return bool(_UUID7.fullmatch(text))


def event_id_time_ms(event_id: str) -> int:
    """Creation time (ms since the epoch) encoded in a UUIDv7."""
    return uuid.UUID(event_id).int >> 80


class EventIdFactory:
    """Makes monotonically increasing UUIDv7 ids; thread-safe.

    Args:
        clock_ms: Milliseconds since the epoch; injected for tests.
        random_bits: Returns ``n`` random bits; injected for tests.
    """

    def __init__(
        self,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        random_bits: Callable[[int], int] = lambda n: int.from_bytes(os.urandom(8)) >> (64 - n),
    ) -> None:
        self._clock_ms = clock_ms
        self._random_bits = random_bits
        self._lock = threading.Lock()
        self._last_ms = -1
        self._counter = 0

    def __call__(self) -> str:
        """A new id, greater than every id this factory made before."""
        with self._lock:
            now = self._clock_ms()
            if now > self._last_ms:
                self._last_ms, self._counter = now, self._random_bits(10)
            else:
                # Same millisecond (or the clock stepped back): count up within it.
                self._counter += 1
                if self._counter > 0xFFF:
                    self._last_ms, self._counter = self._last_ms + 1, 0
            return uuid7_from(self._last_ms, self._counter, self._random_bits(62))
