"""Waiting for a condition with a deadline: never a sleep standing in for an assertion."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(predicate: Callable[[], bool], *, timeout_s: float, interval_s: float = 0.2,
               alive: Callable[[], None] | None = None) -> bool:
    """Poll ``predicate`` until it holds or ``timeout_s`` has passed.

    Args:
        predicate: The condition; it must be cheap enough to call every ``interval_s``.
        timeout_s: The deadline, from now.
        interval_s: Pause between two checks.
        alive: Called before each check; raises if a process the wait depends on died,
            so that a crash fails at once instead of after the whole deadline.

    Returns:
        Whether the condition held before the deadline.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if alive is not None:
            alive()
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)
