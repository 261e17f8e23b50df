"""A stand-alone process that escalates through the real uplink, for kill -9 tests.

``python -m tests.edge_agent.uplink_driver PORT STATE_DIR LEDGER START COUNT RATE``
escalates events ``START .. START+COUNT-1`` at ``RATE`` per second. After each commit
it appends the stored event ids to ``LEDGER`` (fsynced), so the test knows which events
the agent had accepted when it was killed. Then it waits until the outbox is empty.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from edge_agent.config import MqttConfig, OutboxConfig
from edge_agent.delivery.outbox import Outbox, OutboxItem
from edge_agent.delivery.uplink import Uplink
from sync import StatusMessage, TopicLayout
from tests.edge_agent.helpers import event_item


def main() -> int:
    port, state, ledger, start, count, rate = sys.argv[1:7]
    layout = TopicLayout()
    outbox = Outbox(Path(state) / "outbox.sqlite3", OutboxConfig())
    ledger_file = Path(ledger).open("a")  # noqa: SIM115 - open for the process's life

    def on_stored(items: list[OutboxItem]) -> None:
        ledger_file.write("".join(f"{item.event_id}\n" for item in items))
        ledger_file.flush()
        os.fsync(ledger_file.fileno())

    uplink = Uplink(
        device_id="cam-kill", config=MqttConfig(port=int(port), reconnect_min_s=0.1,
                                                reconnect_max_s=0.5, keepalive_s=5),
        outbox=outbox, layout=layout,
        status=lambda state: StatusMessage(device_id="cam-kill", state=state, at=time.time()),
        on_stored=on_stored,
    )
    uplink.start()
    interval = 1.0 / float(rate)
    for index in range(int(start), int(start) + int(count)):
        uplink.submit(event_item(layout, "cam-kill", index))
        time.sleep(interval)
    drained = uplink.wait_idle(60)
    uplink.stop()
    return 0 if drained else 3


if __name__ == "__main__":
    sys.exit(main())
