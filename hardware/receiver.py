"""A node's counterpart on a bench: verifies, deduplicates and acknowledges what nodes publish.

The HIL rig, the node tests and the demo use it where a gateway would sit; it speaks the same
protocol (docs/PROTOCOL.md) through the same codec (ghnode.wire), but stores nothing.
"""
import threading
from collections import Counter, defaultdict

import paho.mqtt.client as mqtt

from ghnode import wire


class NodeReceiver:
    def __init__(self, host: str, port: int, secrets: dict[str, bytes], client_id: str = "gridhive-bench"):
        self.secrets = dict(secrets)
        self.acking = True  # a test can stop acknowledging to make nodes buffer
        self.accepted = defaultdict(list)   # node -> seqs in arrival order, each once
        self.duplicates = Counter()         # node -> messages seen again (re-sent after a lost ack)
        self.rejected = Counter()           # reason -> count
        self.latest = defaultdict(dict)     # node -> kind -> last accepted message
        self.online = {}                    # node -> retained status
        self._seen = defaultdict(set)
        self._cid = 0
        self._lock = threading.Lock()
        self.connected = threading.Event()
        # A persistent session: while this receiver is away the broker queues QoS 1 messages for it,
        # so a node that stays connected does not have to re-send them out of order later.
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 2)
        self.client.connect_async(host, port, keepalive=15)

    def start(self) -> None:
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        client.subscribe("gh/+/+", qos=1)
        self.connected.set()

    def _secret_for(self, node):
        return self.secrets.get(node)

    def _on_message(self, client, userdata, message):
        parsed = wire.parse_topic(message.topic)
        if parsed is None or parsed[1] in wire.DOWN_KINDS:
            return
        node, kind = parsed
        try:
            msg = wire.decode(message.payload, self._secret_for)
        except wire.WireError as e:
            with self._lock:
                self.rejected[e.reason] += 1
            return
        if msg["node"] != node or msg["t"] != kind:
            with self._lock:
                self.rejected["topic_mismatch"] += 1
            return
        if kind == "status":
            with self._lock:
                self.online[node] = msg
            return
        with self._lock:
            if msg["seq"] in self._seen[node]:
                self.duplicates[node] += 1
            else:
                self._seen[node].add(msg["seq"])
                self.accepted[node].append(msg["seq"])
                self.latest[node][kind] = msg
        if self.acking:
            self.ack(node, msg["boot"], [msg["seq"]])

    def ack(self, node: str, boot: int, seqs: list[int]) -> None:
        msg = {"v": wire.VERSION, "t": "ack", "node": node, "boot": boot, "acks": seqs}
        self.client.publish(wire.topic(node, "ack"), wire.encode(msg, self.secrets[node]), qos=1)

    def command(self, node: str, relay: int, action: str) -> int:
        """Send a signed relay command to the node's current boot; returns its command id."""
        with self._lock:
            boot = self.latest[node]["tele"]["boot"]
            self._cid += 1
            cid = self._cid
        msg = {"v": wire.VERSION, "t": "cmd", "node": node, "boot": boot, "cid": cid, "relay": relay,
               "action": action}
        self.client.publish(wire.topic(node, "cmd"), wire.encode(msg, self.secrets[node]), qos=1)
        return cid

    def snapshot(self) -> dict:
        """A consistent copy of what has been received, for display or assertions."""
        with self._lock:
            return {
                "accepted": {n: list(s) for n, s in self.accepted.items()},
                "duplicates": dict(self.duplicates),
                "rejected": dict(self.rejected),
                "latest": {n: dict(k) for n, k in self.latest.items()},
                "online": dict(self.online),
            }
