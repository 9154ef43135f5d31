"""Building blocks for the controller tests: node messages exactly as the gateway forwards them, and a
gateway outbox (publish batches, resend what is not acknowledged) on a real broker."""
import json
import threading
import time

import paho.mqtt.client as mqtt

from ghnode import wire

SECRET = bytes(range(32))


def node_message(node, seq, t="tele", boot=7, ts_ms=None, **fields):
    """A node message as `ghnode.wire.decode` returns it (encoded, tagged and verified on the way)."""
    msg = {"v": 1, "t": t, "node": node, "boot": boot, "seq": seq,
           "ts_ms": ts_ms if ts_ms is not None else 1_700_000_000_000 + seq * 1000, "synced": True}
    if t == "tele":
        msg |= {"vrms_mv": 230_000, "relays": [],
                "ch": [{"n": 0, "name": "main", "irms_ma": 1000 + seq, "power_w": 230, "va": 240, "pf_milli": 958,
                        "dir": "import", "energy_in_wh": 10 * seq, "energy_out_wh": 0, "open": False, "clip": False}]}
    elif t == "health":
        msg |= {"heap_free_b": 80_000, "uptime_s": seq, "reset_cause": "power", "rssi_dbm": -61, "buf_depth": 0,
                "buf_dropped": 0, "fw": "1.2.0", "safe_mode": False, "error": None}
    elif t == "status":
        msg = {"v": 1, "t": "status", "node": node, "boot": boot, "online": True}
    elif t == "evt":
        msg |= {"kind": "reboot"}
    msg |= fields
    return wire.decode(wire.encode(msg, SECRET), lambda _node: SECRET)


def batch(gw, gseq, items, ts_ms=1_700_000_000_000):
    return {"v": 1, "gw": gw, "gseq": gseq, "ts_ms": ts_ms, "items": items}


def wait_for(condition, timeout_s=10.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


def payload(obj):
    return json.dumps(obj, separators=(",", ":")).encode()


class GatewayOutbox:
    """What a gateway's uplink does: publish batches QoS 1, resend every unacknowledged one after
    `resend_after_s`, count every ack (an ack for an already acknowledged gseq is a re-ack)."""

    def __init__(self, host, port, gw, resend_after_s=1.0, on_ack=None):
        self.gw = gw
        self.on_ack = on_ack       # called with each ack's gseqs, on paho's thread
        self.resend_after_s = resend_after_s
        self.pending = {}          # gseq -> (payload, last sent monotonic s)
        self.acked = set()
        self.ack_count = {}        # gseq -> acks received
        self.sent = 0
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{gw}")
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe(f"ghc/{gw}/ack", qos=1)
        self.client.connect(host, port, keepalive=10)
        self.client.loop_start()

    def _on_message(self, _client, _userdata, message):
        acks = json.loads(message.payload)["acks"]
        if self.on_ack:
            self.on_ack(acks)
        with self.lock:
            for gseq in acks:
                self.ack_count[gseq] = self.ack_count.get(gseq, 0) + 1
                self.acked.add(gseq)
                self.pending.pop(gseq, None)

    def send(self, gseq, obj):
        data = payload(obj)
        with self.lock:
            self.pending[gseq] = (data, time.monotonic())
            self.sent += 1
        self.client.publish(f"ghc/{self.gw}/up", data, qos=1)

    def resend_due(self):
        now = time.monotonic()
        with self.lock:
            due = [(g, d) for g, (d, t) in self.pending.items() if now - t >= self.resend_after_s]
            for g, d in due:
                self.pending[g] = (d, now)
                self.sent += 1
        for _g, d in sorted(due):
            self.client.publish(f"ghc/{self.gw}/up", d, qos=1)

    def wait_all_acked(self, timeout_s):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.resend_due()
            with self.lock:
                if not self.pending:
                    return True
            time.sleep(0.05)
        return False

    def publish_raw(self, topic, data, retain=False):
        self.client.publish(topic, data, qos=1, retain=retain).wait_for_publish(5)

    def close(self):
        self.client.disconnect()  # first: it wakes paho's loop thread, so loop_stop does not wait ~1 s
        self.client.loop_stop()
