"""Exponential backoff with jitter, so that a fleet does not reconnect in lockstep; and
the bookkeeping of a paho client's failed connection attempts."""

from __future__ import annotations

import logging
import random
import sys
import time
from dataclasses import dataclass

import paho.mqtt.client as mqtt


@dataclass(frozen=True, slots=True)
class Backoff:
    """``min_s * 2**attempt`` capped at ``max_s``, then scaled by a random 0.5-1.0."""

    min_s: float
    max_s: float

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before retry number ``attempt`` (0 for the first retry)."""
        ceiling = min(self.max_s, self.min_s * 2.0 ** min(attempt, 32))
        return ceiling * (0.5 + 0.5 * rng.random())


class Reconnects:
    """One paho client's connection attempts: each failure is counted, sets the client's
    next delay from ``backoff``, and is logged (WARNING; ERROR when the broker refused
    the client) with its cause and when the next attempt comes.

    Its methods are paho callbacks' bodies: they run in paho's thread only.

    Args:
        where: Names the connection in log lines (``sensor source s1: host:port``).
        backoff: Delays between attempts.
        rng: Jitter source.
        logger: Where the failures are logged.
    """

    def __init__(self, where: str, backoff: Backoff, rng: random.Random,
                 logger: logging.Logger) -> None:
        self.where = where
        self.backoff = backoff
        self.total = 0
        self._rng = rng
        self._log = logger
        self._streak = 0
        self._refused = False

    def apply(self, client: mqtt.Client) -> float:
        """Set the client's delay before its next attempt; returns it (seconds)."""
        delay = self.backoff.delay(self._streak, self._rng)
        # paho annotates int seconds but waits float seconds; sub-second matters here.
        client.reconnect_delay_set(min_delay=delay, max_delay=delay)  # type: ignore[arg-type]
        return delay

    def connected(self, client: mqtt.Client) -> None:
        """The broker accepted the client: the next failure starts from the shortest delay."""
        self._streak = 0
        self.apply(client)

    def connect_failed(self, client: mqtt.Client) -> None:
        """paho's ``on_connect_fail``: it runs inside paho's ``except OSError`` block
        without the error, so the exception being handled is the cause (refused,
        unresolvable host, certificate that does not verify)."""
        error = sys.exc_info()[1]
        self._failed(client, str(error) if error is not None else "connection failed")

    def refused(self, client: mqtt.Client, reason: object) -> None:
        """A CONNACK with a failure reason code (paho reports a disconnect next)."""
        self._refused = True
        self._failed(client, f"the broker refused the connection ({reason})", logging.ERROR)

    def disconnected(self, client: mqtt.Client, reason: object, *, was_connected: bool) -> None:
        """paho's ``on_disconnect`` while the client should stay connected."""
        if self._refused:  # the disconnect that follows a refused CONNACK: counted once
            self._refused = False
            return
        self._failed(client, f"disconnected ({reason})" if was_connected
                     else f"the connection closed before it was accepted ({reason})")

    def _failed(self, client: mqtt.Client, cause: str, level: int = logging.WARNING) -> None:
        self.total += 1
        self._streak += 1
        delay = self.apply(client)
        self._log.log(level, "%s: no connection: %s; retry %d in %.1f s (at %s)", self.where,
                      cause, self._streak, delay,
                      time.strftime("%H:%M:%S", time.localtime(time.time() + delay)))
