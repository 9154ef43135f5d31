"""The controller as a real process, SIGKILLed and restarted while two gateways keep sending batches:
every item ends up stored exactly once, and batches sent again after their ack are acknowledged again."""
import signal
import subprocess
import sys
import threading
import time

import pytest

from gridhive.controller.store import open_store

from ctl_helpers import GatewayOutbox, batch, node_message, wait_for

pytestmark = pytest.mark.broker

GATEWAYS = ("gw-a", "gw-b")
NODES_PER_GW = 5
SEND_FOR_S = 6.0
BATCH_EVERY_S = 0.02
# (seconds after the start, action): the controller dies twice; the second time it stays down 1 s.
SCHEDULE = ((1.5, "kill"), (1.7, "start"), (3.5, "kill"), (4.5, "start"))


class ControllerProcess:
    def __init__(self, db_url, broker, workdir):
        self.cmd = [sys.executable, "-m", "gridhive.controller", "serve", "--db", db_url,
                    "--broker", f"{broker.host}:{broker.port}", "--log-level", "warning"]
        self.workdir = workdir
        self.proc = None
        self.starts = 0

    def start(self):
        self.starts += 1
        self.log = self.workdir / f"controller-{self.starts}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s=20):
        wait_for(lambda: b"controller ready" in self.log.read_bytes() or self.proc.poll() is not None, timeout_s,
                 "the controller process")
        assert self.proc.poll() is None, self.log.read_text()

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self):
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(15)


def test_sigkill_and_restart_mid_stream_store_every_item_exactly_once(db_url, mosquitto, tmp_path):
    controller = ControllerProcess(db_url, mosquitto, tmp_path)
    controller.start()
    controller.wait_ready()
    outboxes = {gw: GatewayOutbox(mosquitto.host, mosquitto.port, gw, resend_after_s=1.0) for gw in GATEWAYS}
    expected_items, sent_batches = set(), {gw: {} for gw in GATEWAYS}
    node_seq = {(gw, n): 0 for gw in GATEWAYS for n in range(NODES_PER_GW)}
    stop_sending = threading.Event()

    def gateway_traffic():
        gseq = 0
        last_item = {}
        while not stop_sending.is_set():
            gseq += 1
            for gw in GATEWAYS:
                items = []
                for n in range(NODES_PER_GW):
                    node_seq[(gw, n)] += 1
                    items.append(node_message(f"{gw}-n{n}", node_seq[(gw, n)]))
                if gseq % 7 == 0 and gw in last_item:
                    items.append(last_item[gw])   # an item already sent in an earlier batch
                last_item[gw] = items[-1]
                expected_items.update((m["node"], m["seq"]) for m in items)
                body = batch(gw, gseq, items)
                sent_batches[gw][gseq] = body
                outboxes[gw].send(gseq, body)
                outboxes[gw].resend_due()
            time.sleep(BATCH_EVERY_S)

    sender = threading.Thread(target=gateway_traffic, daemon=True)
    t0 = time.monotonic()
    sender.start()
    try:
        for at_s, action in SCHEDULE:
            time.sleep(max(0.0, t0 + at_s - time.monotonic()))
            controller.kill() if action == "kill" else controller.start()
        time.sleep(max(0.0, t0 + SEND_FOR_S - time.monotonic()))
        stop_sending.set()
        sender.join(10)
        controller.wait_ready()
        for gw, box in outboxes.items():
            assert box.wait_all_acked(30), f"{gw}: {len(box.pending)} batches never acknowledged"
        # Batches sent again after their ack (an ack lost on the way back): acknowledged again.
        for gw, box in outboxes.items():
            for gseq in (1, 2, 3):
                box.send(gseq, sent_batches[gw][gseq])
        for box in outboxes.values():
            wait_for(lambda b=box: all(b.ack_count.get(g, 0) >= 2 for g in (1, 2, 3)), 15, "the re-acks")
        assert controller.terminate() == 0
    finally:
        for box in outboxes.values():
            box.close()
        if controller.proc.poll() is None:
            controller.kill()

    store = open_store(db_url)
    try:
        stored = [(m["node"], m["seq"]) for m in store.messages()]
        batch_keys = store.batch_keys()
    finally:
        store.close()
    assert len(stored) == len(set(stored)) == len(expected_items)
    assert set(stored) == expected_items
    assert batch_keys == {(gw, g) for gw in GATEWAYS for g in sent_batches[gw]}
    # The kills really interrupted the stream: some batches had to be resent.
    total_batches = sum(len(b) for b in sent_batches.values())
    assert sum(box.sent for box in outboxes.values()) > total_batches
    print(f"\n{total_batches} batches, {len(expected_items)} items, "
          f"{sum(box.sent for box in outboxes.values()) - total_batches} sends beyond the first, "
          f"{controller.starts} controller starts")
