"""The hub's side of the decision journal: what it accepts, and how fast.

Devices publish their decision journal (``track/1`` messages, :class:`sync.TrackEventMessage`)
on ``{prefix}/v1/{device}/journal``; the hub keeps the lifecycles of escalated tracks, so
that an event's timeline (``GET /v1/events/{id}/timeline``) shows how the edge saw the
object before, during and after it asked. A journal message is hostile input like any
other: the ingest worker decodes it with :data:`JOURNAL_MAX_BYTES` as its size bound,
refuses one claiming another device (the topic names the sender; the broker lets a
device publish only on its own), then asks :func:`check_step` whether it is coherent and
:class:`DeviceRate` whether the device is within its rate.

What is kept (see :meth:`cloud_hub.store.Store.add_journal_step`): every step, from a
track's ``new`` on, since the hub cannot know at ``new`` whether the track will be
escalated. A track that ends never escalated (its ``end`` step names no escalation) has
its steps deleted then; retention deletes those whose ``end`` was lost after
``journal_unescalated_keep_s``, and the rest with their events.

Pure: values in, values out; time is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sync import TrackEventMessage, is_event_id

#: A journal message holds at most 256 sightings of about 70 bytes: 64 KiB is ample.
JOURNAL_MAX_BYTES = 64 * 1024
#: The most steps a timeline returns (a lifecycle with more is marked truncated).
MAX_TIMELINE_STEPS = 1000


def check_step(message: TrackEventMessage) -> str | None:
    """Why ``message`` cannot be a step of a real lifecycle, or ``None`` if it can.

    Its frames must lie in its track's frame range, a ``new`` step must be the track's
    first (nothing escalated or judged yet), and an event id must be one an agent makes.
    """
    if message.first_frame > message.last_frame:
        return f"first_frame {message.first_frame} is after last_frame {message.last_frame}"
    outside = [s.frame for s in message.sightings
               if not message.first_frame <= s.frame <= message.last_frame]
    if outside:
        return (f"sighting frame {outside[0]} lies outside the track's frames "
                f"{message.first_frame}-{message.last_frame}")
    if message.event_id is not None and not is_event_id(message.event_id):
        return f"event_id {message.event_id!r} is not a lower-case UUIDv7"
    if message.step == "new" and (message.escalations or message.verdict is not None):
        return "a new step cannot carry escalations or a verdict"
    if message.verdict_timing is not None and message.verdict is None:
        return "verdict_timing without a verdict"
    return None


def never_escalated(message: TrackEventMessage) -> bool:
    """Whether ``message`` ends a track that the hub was never asked about."""
    return message.step == "end" and message.escalations == 0 and message.event_id is None


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


@dataclass(slots=True)
class DeviceRate:
    """At most ``per_minute`` journal steps a minute from each device, ``burst`` at once.

    Only provisioned devices reach it (the worker checks that first), so it holds a
    bucket per device of the fleet, no more.
    """

    per_minute: float
    burst: float
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def allow(self, device_id: str, now: float) -> bool:
        """Spend one of ``device_id``'s tokens, if it has one."""
        bucket = self._buckets.get(device_id)
        if bucket is None:
            bucket = self._buckets[device_id] = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens
                            + max(0.0, now - bucket.updated) * self.per_minute / 60.0)
        bucket.updated = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True
