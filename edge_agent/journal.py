"""The decision journal: every tracked object as a lifecycle, like Frigate's events.

Each tracked object of a source yields ``track/1`` messages
(:class:`sync.TrackEventMessage`): ``new`` when the edge first sees it, ``update`` when
its decision changes (action, reason or answer) or when an escalation, a verdict, a
fallback or a reconciliation happens, and ``end`` when its track ends. A verdict or a
reconciliation may come after ``end`` (the object left before the hub answered); it is
then one more ``update``. Every message carries the frames the object was seen on since
the previous one (frame number, box, score), so the messages of a track together hold its
whole frame range; a long quiet track gets an ``update`` whenever
:data:`sync.messages.MAX_JOURNAL_SIGHTINGS` sightings have gathered.

:class:`DecisionJournal` is pure (state and time in, messages out). :class:`JournalFile`
is the I/O: JSON lines appended to a file in the state folder, rotated by size
(``journal.jsonl``, then ``journal.jsonl.1`` ... ``.N``). The agent's pipeline thread owns
both, and publishes each message on the device's journal topic (QoS 0).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from edge_agent.policy import Action, Decision, FrameDecision
from edge_agent.tracks import Observation, TrackState
from sync import JournalStep, SightingPayload, TrackEventMessage
from sync.messages import MAX_JOURNAL_SIGHTINGS

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Record:
    """What the journal last said about a track."""

    action: Action
    reason: str
    positive: bool
    event_id: str | None = None
    verdict: bool | None = None
    timing: Literal["on-time", "late"] | None = None
    fell_back: bool = False
    agrees: bool | None = None


class DecisionJournal:
    """Turns the pipeline's track decisions into journal messages; not thread-safe."""

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self._records: dict[tuple[str, int], _Record] = {}

    def frame(self, observation: Observation, decided: FrameDecision,
              at: float) -> list[TrackEventMessage]:
        """The messages one detector run gives: new tracks, changed decisions, ends."""
        messages = []
        for decision in decided.decisions:
            assert decision.track is not None
            messages += self._decided(decision.track, decision, at)
        for state in decided.held:
            messages += self._changed(state, "local", "verdict-held", True, at)
        for state in observation.ended:
            record = self._records.pop((state.source, state.track_id), None)
            if record is not None:
                messages.append(self._message("end", state, record, at))
        return messages

    def escalated(self, state: TrackState, event_id: str, at: float) -> TrackEventMessage:
        """``state`` was escalated as ``event_id``."""
        record = self._record(state)
        record.event_id = event_id
        record.verdict, record.timing, record.fell_back, record.agrees = None, None, False, None
        return self._message("update", state, record, at)

    def verdict(self, state: TrackState, event_id: str, *, confirmed: bool, late: bool,
                agrees: bool | None, at: float) -> TrackEventMessage:
        """The hub's verdict on ``state``'s escalation ``event_id`` arrived (``late``:
        after the fallback ran). It names its event even after the track ended."""
        record = self._record(state)
        if record.event_id is None:  # the track ended (or the agent restarted) meanwhile
            record.event_id = event_id
        record.verdict = confirmed
        record.timing = "late" if late else "on-time"
        record.agrees = agrees
        return self._message("update", state, record, at)

    def fell_back(self, state: TrackState, at: float) -> TrackEventMessage:
        """No verdict came in time for ``state``'s escalation: the edge decided."""
        record = self._record(state)
        record.fell_back = True
        return self._message("update", state, record, at)

    def _decided(self, state: TrackState, decision: Decision,
                 at: float) -> list[TrackEventMessage]:
        key = (state.source, state.track_id)
        if key not in self._records:
            record = _Record(decision.action, decision.reason, decision.positive)
            self._records[key] = record
            return [self._message("new", state, record, at)]
        return self._changed(state, decision.action, decision.reason, decision.positive, at)

    def _changed(self, state: TrackState, action: Action, reason: str, positive: bool,
                 at: float) -> list[TrackEventMessage]:
        record = self._record(state)
        same = (record.action, record.reason, record.positive) == (action, reason, positive)
        if same and len(state.sightings) < MAX_JOURNAL_SIGHTINGS:
            return []
        record.action, record.reason, record.positive = action, reason, positive
        return [self._message("update", state, record, at)]

    def _record(self, state: TrackState) -> _Record:
        """The track's record; one for a track the journal has not seen decided yet (a
        verdict after the agent restarted) starts from its last detection."""
        key = (state.source, state.track_id)
        record = self._records.get(key)
        if record is None:
            record = _Record("local", "verdict-reused", bool(state.verdict))
            if not state.ended:
                self._records[key] = record
        return record

    def _message(self, step: JournalStep, state: TrackState, record: _Record,
                 at: float) -> TrackEventMessage:
        sightings = state.sightings[-MAX_JOURNAL_SIGHTINGS:]
        state.sightings.clear()
        verdict: Literal["confirmed", "rejected"] | None = None
        if record.verdict is not None:
            verdict = "confirmed" if record.verdict else "rejected"
        return TrackEventMessage(
            device_id=self.device_id, step=step, source=state.source,
            track_id=state.track_id, at=at, first_frame=state.first_frame,
            last_frame=state.last_frame, label=state.last_detection.label,
            action=record.action, reason=record.reason, positive=record.positive,
            sightings=tuple(
                SightingPayload(frame=s.frame, box=s.box, score=min(max(s.score, 0.0), 1.0))
                for s in sightings),
            event_id=record.event_id, escalations=state.escalations, verdict=verdict,
            verdict_timing=record.timing,
            fell_back=record.fell_back, agrees=record.agrees,
        )


class JournalFile:
    """The journal's JSON-lines file, rotated by size; owned by one thread.

    A write that fails (a full disk) is logged once and skipped: the journal is a
    record, never a reason to stop deciding.
    """

    def __init__(self, path: Path, *, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._file: IO[bytes] | None = None
        self._size = 0
        self._failing = False

    def open(self) -> None:
        """Open (or create) the file for appending."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("ab")
        self._size = self._file.tell()

    def write(self, line: bytes) -> None:
        """Append one JSON document as a line, rotating first if it would not fit."""
        if self._file is None:
            raise RuntimeError("JournalFile.write before open()")
        try:
            if self._size and self._size + len(line) + 1 > self.max_bytes:
                self._rotate()
            self._file.write(line + b"\n")
            self._file.flush()
            self._size += len(line) + 1
            self._failing = False
        except OSError as exc:
            if not self._failing:
                log.warning("cannot write the decision journal %s: %s", self.path, exc)
            self._failing = True

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.close()
        for index in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{index + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._file = self.path.open("ab")
        self._size = 0

    def close(self) -> None:
        """Close the file."""
        if self._file is not None:
            self._file.close()
            self._file = None
