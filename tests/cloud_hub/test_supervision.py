"""The hub's threads are supervised: one that dies or ends early fails the process (so
that systemd or Kubernetes restarts it), a store outage is waited out, not died of."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from cloud_hub.errors import StoreUnavailableError
from cloud_hub.judge import Judgement
from cloud_hub.store import DeviceStanding, Store
from cloud_hub.supervision import EXIT_THREAD_FAILED, Supervisor, run_until_failure
from sync import EventMessage, TopicLayout, VerdictMessage, decode, encode
from tests.broker import MosquittoBroker
from tests.cloud_hub.hub_helpers import face_event, running_hub
from tests.support.waiting import wait_until

LAYOUT = TopicLayout()
HANG_GUARD_S = 30.0


class FakeServer:
    """Serves until told to exit, as uvicorn's Server does."""

    def __init__(self) -> None:
        self.should_exit = False
        self.running = threading.Event()

    def run(self) -> None:
        self.running.set()
        assert wait_until(lambda: self.should_exit, timeout_s=HANG_GUARD_S, interval_s=0.01)


@pytest.mark.unit
def test_a_thread_that_raises_fails_the_process() -> None:
    supervisor = Supervisor()

    def broken() -> None:
        raise RuntimeError("disk on fire")

    supervisor.spawn(broken, "intake-0").join(HANG_GUARD_S)
    assert supervisor.failed.is_set()
    assert supervisor.failure == "thread intake-0 died: RuntimeError: disk on fire"


@pytest.mark.unit
def test_a_thread_that_ends_while_the_hub_runs_fails_it_but_not_once_stopping() -> None:
    supervisor = Supervisor()
    supervisor.spawn(lambda: None, "judge-0").join(HANG_GUARD_S)
    assert supervisor.failure == "thread judge-0 ended"
    calm = Supervisor()
    calm.stopping()
    calm.spawn(lambda: None, "judge-0").join(HANG_GUARD_S)
    assert not calm.failed.is_set() and calm.failure is None


@pytest.mark.unit
def test_the_first_failure_is_kept() -> None:
    supervisor = Supervisor()
    supervisor.fail("thread a ended")
    supervisor.fail("thread b ended")
    assert supervisor.failure == "thread a ended"


@pytest.mark.unit
def test_serving_stops_with_exit_70_when_a_thread_fails() -> None:
    supervisor, server = Supervisor(), FakeServer()
    status: list[int] = []
    serving = threading.Thread(target=lambda: status.append(run_until_failure(server, supervisor)))
    serving.start()
    assert server.running.wait(HANG_GUARD_S)
    supervisor.fail("thread verdict-writer ended")
    serving.join(HANG_GUARD_S)
    assert status == [EXIT_THREAD_FAILED] == [70]


@pytest.mark.unit
def test_serving_that_stops_by_itself_exits_0() -> None:
    server = FakeServer()
    server.should_exit = True
    assert run_until_failure(server, Supervisor()) == 0


class OutageStore(Store):
    """A store whose device lookups fail ``outage`` times (the database restarting)."""

    def __init__(self, url: str, outage: int) -> None:
        super().__init__(url)
        self.outage = outage

    def device_standings(self, *, device_ids: object) -> dict[str, DeviceStanding]:
        if self.outage > 0:
            self.outage -= 1
            raise StoreUnavailableError("the database is restarting")
        return super().device_standings(device_ids=device_ids)  # type: ignore[arg-type]


class Confirming:
    model_name = "confirming"

    def judge(self, event: EventMessage) -> Judgement:
        return Judgement("confirmed", (), "confirming", "1", 1.0)


@pytest.mark.integration
def test_an_outage_while_looking_up_senders_is_waited_out(
        tmp_path: Path, broker: MosquittoBroker, astronaut: object) -> None:
    """Found by a profile review: the senders' lookup ran outside the retry loop, so a
    database restart killed the intake thread and the hub took no escalation again."""
    stores: list[OutageStore] = []

    def outage_store(url: str) -> Store:
        stores.append(OutageStore(url, outage=2))
        return stores[-1]

    with running_hub(tmp_path, broker, Confirming(), ["cam-o"], make_store=outage_store,
                     mqtt_client_id="hub-outage", intake_workers=1) as rig:
        event = face_event("cam-o", astronaut)  # type: ignore[arg-type]
        rig.sender.publish(LAYOUT.events("cam-o"), encode(event), qos=1)
        assert rig.answers.wait_for(lambda messages: len(messages) >= 1, HANG_GUARD_S)
        verdict = decode(rig.answers.messages[0][1], VerdictMessage)
        assert (verdict.event_id, verdict.outcome) == (event.event_id, "confirmed")
        assert stores[0].outage == 0
        assert rig.metrics.registry.get_sample_value(
            "hub_message_retries_total", {"reason": "store-unavailable"}) == 2
        assert rig.worker.supervisor.failure is None
    assert rig.worker.supervisor.failure is None  # stopping ends the threads without a failure
