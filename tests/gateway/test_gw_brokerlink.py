"""The gateway's asyncio MQTT client (gateway.brokerlink): its packet codec without sockets, and its
session rules against a real Mosquitto: PUBACK only when the service says so and only on the
connection that delivered the message, the broker's Receive Maximum, a session that outlives the
connection, reconnects, and connection failures reported by reason."""
import asyncio
import time

import pytest

from gwkit import Client, wait
from gridhive.broker import free_port
from gridhive.gateway import brokerlink as bl

pytestmark = pytest.mark.broker


# --- codec ---------------------------------------------------------------------------------------

def test_an_overlong_length_is_a_protocol_error():
    assert bl.read_varint(b"\xff\xff\x7f", 0) == (2_097_151, 3) and bl.read_varint(b"\xff\xff", 0) is None
    with pytest.raises(bl.ProtocolError):
        bl.read_varint(b"\xff\xff\xff\xff\x01", 0)


@pytest.mark.parametrize("mqtt5", [True, False])
def test_publishes_split_at_any_byte_come_out_whole_and_in_order(mqtt5):
    packets = [bl.publish_packet(f"gh/n{i}/tele", bytes([i]) * (i * 70), i % 2, i == 3, 100 + i, mqtt5=mqtt5)
               for i in range(6)]
    stream = b"".join(packets)
    for cut in range(len(stream) + 1):
        got, used = bl.read_packets(bytearray(stream[:cut]))  # what has arrived so far
        assert used == sum(len(p) for p in packets[:len(got)]) and used <= cut
        rest, _ = bl.read_packets(bytearray(stream[used:]))  # the unused bytes, with the rest appended
        assert {kind for kind, _, _ in got + rest} == {bl.PUBLISH}
        decoded = [bl.decode_publish(flags, body, mqtt5=mqtt5) for _, flags, body in got + rest]
        assert decoded == [(f"gh/n{i}/tele", bytes([i]) * (i * 70), i % 2, i == 3, (100 + i) if i % 2 else 0)
                           for i in range(6)]


def test_connect_packets_carry_the_session_settings():
    v5 = bl.connect_packet("gw", 30, mqtt5=True, clean_start=False, user="gateway", password="pw",
                           will=("gh/avail", b"offline", 1, True), session_expiry_s=604_800)
    # protocol level 5; flags: user, password, will retain, will QoS 1, will; no clean start
    assert v5[:2] == bytes([0x10, len(v5) - 2]) and v5[2:9] == b"\x00\x04MQTT\x05" and v5[9] == 0xEC
    assert b"\x11\x00\x09\x3a\x80" in v5 and b"\x21\xff\xff" in v5  # session expiry 7 days, receive max
    v4 = bl.connect_packet("gw", 30, mqtt5=False, clean_start=True)
    assert v4 == b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x1e\x00\x02gw"


def test_connack_properties_give_the_brokers_receive_maximum():
    # Mosquitto 2.0's CONNACK to an MQTT 5 client: topic alias maximum 10, receive maximum 20.
    _, body = bytes.fromhex("2009"), memoryview(bytes.fromhex("00000622000a210014"))
    assert bl.decode_connack(body, mqtt5=True) == (False, 0, 20)
    assert bl.decode_connack(memoryview(b"\x01\x00"), mqtt5=False) == (True, 0, 65535)
    assert bl.decode_connack(memoryview(b"\x00\x86\x00"), mqtt5=True) == (False, 0x86, 65535)


def test_a_qos_2_publish_is_a_protocol_error():
    packet = bl.publish_packet("t", b"x", 1, False, 7, mqtt5=True)
    with pytest.raises(bl.ProtocolError):
        bl.decode_publish(0x04, memoryview(packet[2:]), mqtt5=True)


# --- against Mosquitto -----------------------------------------------------------------------------

class Harness:
    """A BrokerLink on an event loop in this thread; `received` collects what it hands over."""

    def __init__(self, port: int, **kw):
        self.received: list[bl.Received] = []
        self.failures = []
        self.connects = 0
        self.link = bl.BrokerLink(name="test", host="127.0.0.1", port=port, client_id=kw.pop("client_id", "gw-test"),
                                  subscriptions=kw.pop("subscriptions", (("gh/#", 1),)),
                                  on_messages=self.received.extend, on_connect=self._connected,
                                  on_connect_failed=self.failures.append, **kw)

    def _connected(self):
        self.connects += 1

    async def connect(self):
        self.link.start(asyncio.get_running_loop())
        await self.until(lambda: self.link.connected, what="connect")

    async def until(self, predicate, timeout_s=10.0, what="condition"):
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.01)


def test_puback_only_after_ack_and_only_on_the_delivering_connection(mosquitto):
    node = Client(mosquitto.port, client_id="node")

    async def main():
        h = Harness(mosquitto.port)
        await h.connect()
        await asyncio.sleep(0.1)  # SUBACK
        for i in range(5):
            node.publish("gh/n1/tele", b"m%d" % i)
        await h.until(lambda: len(h.received) == 5, what="5 messages")
        for m in h.received[:2]:  # "stored": acknowledged
            h.link.ack(m)
        await asyncio.sleep(0.2)
        stale = h.received[2]
        h.link._protocol.transport.abort()  # the connection dies before the rest are stored
        await h.until(lambda: h.connects == 2, what="reconnect")
        # The broker redelivers exactly the three never acknowledged, on the new connection.
        await h.until(lambda: len(h.received) == 8, what="redelivery")
        again = h.received[5:]
        assert sorted(m.payload for m in again) == [b"m2", b"m3", b"m4"]
        assert {m.generation for m in again} == {h.link.generation} != {stale.generation}
        # m2 is acknowledged only through its stale copy: that packet id belongs to the old
        # connection and must not go out on the new one, so m2 has to come back once more.
        h.link.ack(stale)
        for m in again:
            if m.payload != stale.payload:
                h.link.ack(m)
        await asyncio.sleep(0.3)
        h.link._protocol.transport.abort()
        await h.until(lambda: h.connects == 3, what="second reconnect")
        await h.until(lambda: len(h.received) == 9, what="m2 again")
        await asyncio.sleep(0.3)
        assert len(h.received) == 9 and h.received[8].payload == stale.payload
        await h.link.close()

    try:
        asyncio.run(main())
    finally:
        node.close()


def test_publishes_beyond_the_brokers_receive_maximum_wait_and_all_arrive_in_order(mosquitto):
    watcher = Client(mosquitto.port, client_id="watcher")
    watcher.subscribe("gh/+/ack")

    async def main():
        h = Harness(mosquitto.port, subscriptions=(("gh/+/tele", 1),))
        await h.connect()
        assert h.link._send_quota == 20  # Mosquitto's default, from its CONNACK
        for i in range(300):
            assert h.link.publish("gh/n1/ack", b"%d" % i)
        assert h.link.unacked == 300
        await h.until(lambda: h.link.unacked == 0, what="every PUBACK")
        await h.link.close()

    try:
        asyncio.run(main())
        wait(lambda: len(watcher.messages("gh/n1/ack")) == 300, 10, "300 messages")
        assert [p for _, p, _ in watcher.messages("gh/n1/ack")] == [b"%d" % i for i in range(300)]
    finally:
        watcher.close()


def test_reading_pauses_until_resumed(mosquitto):
    node = Client(mosquitto.port, client_id="node")

    async def main():
        h = Harness(mosquitto.port)
        await h.connect()
        await asyncio.sleep(0.1)
        h.link.pause_reading()  # the service's pending batch is full while one is being written
        for i in range(10):
            node.publish("gh/n1/tele", b"%d" % i)
        await asyncio.sleep(0.5)
        assert h.received == []
        h.link.resume_reading()
        await h.until(lambda: len(h.received) == 10, what="10 messages after resuming")
        await h.link.close()

    try:
        asyncio.run(main())
    finally:
        node.close()


def test_the_session_keeps_what_arrives_while_the_gateway_is_away(mosquitto):
    node = Client(mosquitto.port, client_id="node")

    async def run_once(expect):
        h = Harness(mosquitto.port)
        await h.connect()
        await h.until(lambda: len(h.received) >= expect, what=f"{expect} messages")
        await asyncio.sleep(0.2)
        for m in h.received:
            h.link.ack(m)
        await h.link.close()  # waits for nothing of ours; DISCONNECT keeps the session (expiry 7 days)
        return h.received

    try:
        assert asyncio.run(run_once(0)) == []  # subscribes
        for i in range(3):
            node.publish("gh/n1/tele", b"away %d" % i)
        time.sleep(0.3)
        got = asyncio.run(run_once(3))
        assert [m.payload for m in got] == [b"away 0", b"away 1", b"away 2"]
    finally:
        node.close()


def test_a_broker_that_is_not_there_is_reported_and_retried():
    port = free_port()

    async def main():
        h = Harness(port)
        h.link.start(asyncio.get_running_loop())
        await h.until(lambda: h.failures, what="a failure")
        assert h.failures[0].reason == "refused" and f"127.0.0.1:{port}" in h.failures[0].message
        assert not h.link.connected and not h.link.publish("gh/n1/ack", b"x")  # the caller keeps it
        await h.link.close()

    asyncio.run(main())
