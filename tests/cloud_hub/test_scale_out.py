"""Hub replicas on one shared subscription and one PostgreSQL database.

The first two tests run ``cloud-hub serve`` with its models; the others run replicas
whose judge costs a fixed time per event (:mod:`bench.replica`, the scale-out benchmark's
rig), so that what they count is how the replicas share the work, not how fast two
cores run models: with one judge slot per replica, the largest share of a burst is the
number of judgements one after another the burst needed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import sqlalchemy as sa
from paho.mqtt.enums import CallbackAPIVersion
from skimage import data

from bench.scaleout import ScaleOutRig, wait_ready
from cloud_hub.store import Store, rollouts
from models import ModelStore
from sync import ModelAnnouncement, TopicLayout, UpdateReport, decode, encode
from sync.rollout import on_report, start
from tests.broker import Collector, MosquittoBroker, free_port
from tests.cloud_hub.conftest import postgres_store_url
from tests.cloud_hub.hub_helpers import SECRET, face_event
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).parent.parent.parent
LAYOUT = TopicLayout()
BURST = 60


def _hub(name: str, port: int, broker: MosquittoBroker, database_url: str,
         store: ModelStore, folder: Path, **settings: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ, "CLOUD_HUB_DATABASE_URL": database_url,
        "CLOUD_HUB_MQTT_PORT": str(broker.port), "CLOUD_HUB_MQTT_CLIENT_ID": name,
        "CLOUD_HUB_HTTP_PORT": str(port), "CLOUD_HUB_MODEL_STORE": str(store.root),
        "CLOUD_HUB_DATA_DIR": str(folder / name), "CLOUD_HUB_SECRET_KEY": SECRET,
        "CLOUD_HUB_LANDMARK_MODEL": "face-landmark", "CLOUD_HUB_INGEST_WORKERS": "2",
        **{f"CLOUD_HUB_{key.upper()}": value for key, value in settings.items()},
    }
    return subprocess.Popen([sys.executable, "-m", "cloud_hub.cli", "serve"], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def _two_hubs(folder: Path, zoo_store: ModelStore, database_url: str,
              **settings: str) -> Iterator[tuple[MosquittoBroker, mqtt.Client]]:
    """A private broker, two ready ``cloud-hub serve`` processes on it and one database,
    and a connected publisher; all stopped on exit."""
    broker = MosquittoBroker(folder / "broker")
    broker.start()
    ports = [free_port(), free_port()]
    hubs = [_hub(f"hub-{i}", port, broker, database_url, zoo_store, folder, **settings)
            for i, port in enumerate(ports)]
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    try:
        deadline = time.monotonic() + 120
        while not all(_ready(port) for port in ports):
            assert time.monotonic() < deadline, "hubs did not become ready"
            assert all(h.poll() is None for h in hubs), hubs[0].stderr or hubs[1].stderr
            time.sleep(0.3)
        publisher.connect("127.0.0.1", broker.port)
        publisher.loop_start()
        yield broker, publisher
    finally:
        publisher.disconnect()
        for hub in hubs:
            hub.terminate()
        for hub in hubs:
            hub.wait(30)
        broker.stop()


def test_burst_is_split_between_two_hubs_and_stored_exactly_once(
    tmp_path: Path, zoo_store: ModelStore, postgres_schema: str
) -> None:
    url = postgres_store_url(postgres_schema)
    store = Store(url)
    store.open()
    store.add_device(device_id="cam-burst", group="yard")
    try:
        with _two_hubs(tmp_path, zoo_store, url) as (_, publisher):
            images = [data.astronaut(), data.coffee()]
            events = [face_event("cam-burst", images[i % 2]) for i in range(BURST)]
            for event in events:
                publisher.publish(LAYOUT.events("cam-burst"), encode(event), qos=1)
            for event in events[:5]:  # QoS 1 redeliveries and agent retries: resend some
                publisher.publish(LAYOUT.events("cam-burst"), encode(event), qos=1)
            deadline = time.monotonic() + 120
            while True:
                page = store.list_events(device_id="cam-burst", limit=500).items
                if len(page) == BURST and all(e["outcome"] for e in page):
                    break
                assert time.monotonic() < deadline, f"{len(page)} stored"
                time.sleep(0.3)
            time.sleep(1.0)  # let the resent duplicates land too
            page = store.list_events(device_id="cam-burst", limit=500).items
        assert len(page) == BURST
        assert {e["id"] for e in page} == {e.event_id for e in events}
        by_hub = {name: sum(e["handled_by"] == name for e in page) for name in ("hub-0", "hub-1")}
        assert all(count > 0 for count in by_hub.values()), by_hub
        outcomes = {e["id"]: e["outcome"] for e in page}
        assert outcomes[events[0].event_id] == "confirmed"
        assert outcomes[events[1].event_id] == "rejected"
    finally:
        store.close()


def _blocked_by(engine: sa.Engine, pid: int) -> int:
    """How many database sessions wait, directly or in the lock's queue behind another
    waiter, for a lock that session ``pid`` holds."""
    with engine.connect() as conn:
        waiting = {int(row[0]): {int(b) for b in row[1]} for row in conn.execute(sa.text(
            "SELECT pid, pg_blocking_pids(pid) FROM pg_stat_activity "
            "WHERE cardinality(pg_blocking_pids(pid)) > 0"))}
    behind = {pid}
    while grown := {w for w, blockers in waiting.items() if blockers & behind} - behind:
        behind |= grown
    return len(behind) - 1


def test_two_hubs_take_one_wave_of_reports_at_once_and_the_rollout_loses_none(
    tmp_path: Path, zoo_store: ModelStore, postgres_schema: str
) -> None:
    """Each wave's reports are split between two hubs, and both hubs are made to change
    the rollout at the same moment: the test holds the rollout's row lock until each
    hub has one report in hand and waits on it, then lets them go together."""
    url = postgres_store_url(postgres_schema)
    store = Store(url)
    store.open()
    devices = [f"cam-{i:02d}" for i in range(12)]
    for device in devices:
        store.add_device(device_id=device, group="yard")
    rollout = start(rollout_id="r-two-hubs", model="blazeface-short", version="1.1.0",
                    group="yard", devices=devices, canary_percent=50)
    assert [len(wave) for wave in rollout.waves] == [6, 6]
    store.add_rollout(rollout=rollout)
    locker = sa.create_engine(url)
    one_hub = rollout  # what a single hub makes of the same reports
    try:
        # One ingest worker each: two sessions waiting on the lock are then the two hubs.
        with _two_hubs(tmp_path, zoo_store, url, ingest_workers="1",
                       detector_model="blazeface-short", landmark_model="",
                       batch_autotune="false") as (broker, publisher):
            for wave in rollout.waves:
                reports = [UpdateReport(device_id=device, rollout_id=rollout.id,
                                        model=rollout.model, version=rollout.version,
                                        step="committed", at=time.time()) for device in wave]
                with locker.connect() as conn, conn.begin():
                    conn.execute(sa.select(rollouts.c.id).where(rollouts.c.id == rollout.id)
                                 .with_for_update())
                    holder = int(conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())
                    for report in reports:
                        publisher.publish(LAYOUT.updates(report.device_id), encode(report),
                                          qos=1)
                    deadline = time.monotonic() + 60
                    while _blocked_by(locker, holder) < 2:
                        assert time.monotonic() < deadline, "both hubs did not reach the rollout"
                        time.sleep(0.1)
                for report in reports:
                    one_hub = on_report(one_hub, report.device_id, report.step)
                deadline = time.monotonic() + 60
                while (stored := store.get_rollout(rollout_id=rollout.id)) != one_hub.to_dict():
                    assert time.monotonic() < deadline, (
                        f"the hubs made {stored} of what one hub makes {one_hub.to_dict()}")
                    time.sleep(0.2)
            announcements = Collector(broker.port, LAYOUT.models("yard"))
            try:
                assert announcements.wait_for(lambda got: bool(got), 30)
                [(_, retained)] = announcements.messages
            finally:
                announcements.close()
        assert one_hub.status == "completed"
        assert sorted(r["device_id"] for d in devices
                      for r in store.update_reports_of(device_id=d)) == devices
        assert set(decode(retained, ModelAnnouncement).devices or ()) == set(devices)
    finally:
        locker.dispose()
        store.close()


SCALE_EVENTS = 48  # divisible by 1, 2 and 4 replicas


def test_a_burst_needs_fewer_judge_slots_with_each_replica_added(
    tmp_path: Path, postgres_schema: str
) -> None:
    """1, then 2, then 4 replicas take the same burst: each replica judges a share of
    it, and the largest share (judgements in a row, at a fixed cost each) halves."""
    rig = ScaleOutRig(tmp_path, postgres_store_url(postgres_schema), devices=8, cost_ms=20)
    slots: dict[int, int] = {}
    try:
        rig.start()
        for replicas in (1, 2, 4):
            rig.add_replicas(replicas - len(rig.replicas))
            rig.warm_up()
            ids = rig.fleet.escalate(SCALE_EVENTS)
            assert rig.fleet.wait_answered(ids, 120), f"{len(rig.fleet.unanswered(ids))} unanswered"
            shares = rig.shares(ids)
            assert (shares.stored, shares.stored_twice) == (SCALE_EVENTS, 0)
            assert not rig.fleet.busy, "the simulated devices wait long enough to be judged"
            assert set(shares.by_replica) == {r.name for r in rig.replicas}, shares.by_replica
            assert shares.judge_slots <= SCALE_EVENTS / replicas * 1.25, shares.by_replica
            slots[replicas] = shares.judge_slots
    finally:
        rig.close()
    assert slots[1] > slots[2] > slots[4], slots


def test_a_replica_killed_mid_stream_loses_nothing(tmp_path: Path, postgres_schema: str) -> None:
    """``kill -9`` of one of three replicas with events in hand, more events while it is
    down, and its return under the same client id (as a pod's container restarts under
    the pod's name); the devices resend what nobody answered, as agents do: every event
    stored once, every device has all its verdicts."""
    rig = ScaleOutRig(tmp_path, postgres_store_url(postgres_schema), devices=6, cost_ms=50)
    try:
        rig.start()
        rig.add_replicas(3)
        rig.warm_up()
        victim = rig.replicas[1]
        before = rig.fleet.escalate(60)  # 20 each: a second of judging per replica
        assert wait_until(lambda: rig.shares(before).by_replica.get(victim.name, 0) >= 2,
                          timeout_s=60, interval_s=0.05), "the victim judged nothing"
        victim.kill()  # with most of its 20 stored and acknowledged, not judged
        after = rig.fleet.escalate(60)
        assert wait_until(lambda: len(rig.fleet.unanswered(after)) <= len(after) // 3,
                          timeout_s=60), "the surviving replicas did not answer theirs"
        # The broker kept the dead replica's share of `after` in its session: it comes
        # back for it. What it had stored and not judged, its devices send again.
        victim.start()
        wait_ready([victim])
        ids = before + after

        def answered() -> bool:
            if rig.fleet.wait_answered(ids, 5):
                return True
            rig.fleet.resend_unanswered(ids)
            return False

        assert wait_until(answered, timeout_s=120, interval_s=0), (
            f"{len(rig.fleet.unanswered(ids))} unanswered")
        shares = rig.shares(ids)
        assert (shares.stored, shares.stored_twice) == (len(ids), 0)
        assert not rig.fleet.busy.intersection(ids)
        answered_devices = {rig.fleet.sent_by[i] for i in ids if rig.fleet.verdicts_received[i]}
        assert answered_devices == set(rig.fleet.device_ids)
    finally:
        rig.close()
