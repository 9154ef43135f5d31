"""The node firmware (as a virtual node) against a real Mosquitto broker."""
import time

import paho.mqtt.client as mqtt
import pytest

from ghnode import wire
from gridhive.broker import MosquittoBroker
from gridhive.hardware.receiver import NodeReceiver
from gridhive.hardware.virtual_node import VirtualNode

pytestmark = pytest.mark.broker


def wait_until(predicate, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.fixture
def mosquitto(tmp_path):
    """A broker that keeps sessions across a restart, as the gateway's does (mosquitto-config):
    without that, whichever of node and receiver reconnects first decides whether the receiver
    misses the node's first resends (and then sees them late, out of order)."""
    broker = MosquittoBroker(tmp_path / "broker", persistent=True)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def node_and_receiver(mosquitto, tmp_path):
    node = VirtualNode(tmp_path / "vnode-1", "vnode-1", mosquitto.host, mosquitto.port, "mixed", seed=1,
                       period_s=1)
    receiver = NodeReceiver(mosquitto.host, mosquitto.port, {"vnode-1": node.secret})
    receiver.start()
    node.start()
    yield node, receiver
    node.stop()
    receiver.stop()


def produced_seqs(node):
    """Every seq this boot of the node has used (seqs are consecutive within a boot)."""
    firmware = node.firmware
    return list(range(firmware.first_seq, firmware.seqs.peek()))


def test_broker_outage_of_30_s_loses_nothing_and_keeps_order(mosquitto, node_and_receiver):
    node, receiver = node_and_receiver
    wait_until(lambda: len(receiver.snapshot()["accepted"].get("vnode-1", [])) >= 5, 30, "first readings")

    mosquitto.stop()
    outage_start = time.monotonic()
    wait_until(lambda: not node.firmware.link.up, 20, "the node to notice the outage")
    time.sleep(max(0.0, 30 - (time.monotonic() - outage_start)))
    buffered = node.firmware.buf.depth()
    assert buffered >= 25, f"only {buffered} messages buffered during a 30 s outage at 1 message/s"
    mosquitto.start()

    def caught_up():
        accepted = receiver.snapshot()["accepted"].get("vnode-1", [])
        return node.firmware.buf.depth() == 0 and accepted and accepted[-1] == node.firmware.seqs.peek() - 1

    wait_until(caught_up, 120, "the buffered readings to be delivered and acknowledged")
    node.stop()
    snap = receiver.snapshot()
    accepted = snap["accepted"]["vnode-1"]
    assert accepted == produced_seqs(node), "a reading was lost, duplicated or reordered"
    assert snap["rejected"] == {}
    # The run covered the readings before the outage and every one buffered during it.
    assert len(accepted) >= 5 + buffered


def test_forged_replayed_and_duplicated_acks_are_ignored(mosquitto, node_and_receiver):
    node, receiver = node_and_receiver
    receiver.acking = False
    wait_until(lambda: node.firmware.buf.depth() >= 5 and receiver.snapshot()["accepted"].get("vnode-1"), 30,
               "unacknowledged readings")
    seqs = [seq for seq, _ in node.firmware.buf.pending(limit=3)]
    boot = node.firmware.boot_id
    attacker = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="attacker")
    attacker.connect(mosquitto.host, mosquitto.port)
    attacker.loop_start()
    ack = {"v": 1, "t": "ack", "node": "vnode-1", "boot": boot, "acks": seqs}
    bad = [
        wire.encode(ack, b"\x01" * 32),                       # forged: not the node's secret
        wire.encode(dict(ack, boot=boot ^ 0x5A5A), node.secret),  # replayed from another boot
        b'{"acks":[1,2,3]}',                                  # garbage
    ]
    for payload in bad:
        attacker.publish("gh/vnode-1/ack", payload, qos=1).wait_for_publish(5)
    wait_until(lambda: node.firmware.counters["bad_acks"] >= 3, 10, "the node to see the bad acks")
    pending = [seq for seq, _ in node.firmware.buf.pending()]
    assert all(s in pending for s in seqs)

    good = wire.encode(ack, node.secret)
    for _ in range(3):  # the first frees them; the repeats are duplicates and change nothing
        attacker.publish("gh/vnode-1/ack", good, qos=1).wait_for_publish(5)
    wait_until(lambda: node.firmware.counters["acks"] >= len(seqs), 10, "the valid ack")
    time.sleep(0.5)
    pending = [seq for seq, _ in node.firmware.buf.pending()]
    assert not any(s in pending for s in seqs)
    assert node.firmware.counters["acks"] == len(seqs)
    attacker.loop_stop()
    attacker.disconnect()


def test_relay_command_round_trip_and_last_will(mosquitto, node_and_receiver):
    node, receiver = node_and_receiver
    wait_until(lambda: "tele" in receiver.snapshot()["latest"].get("vnode-1", {}), 30, "telemetry")
    wait_until(lambda: receiver.snapshot()["online"].get("vnode-1", {}).get("online"), 10, "the birth message")
    cid = receiver.command("vnode-1", 0, "on")

    def reply():
        r = receiver.snapshot()["latest"]["vnode-1"].get("reply")
        return r if r and r["cid"] == cid else None

    wait_until(reply, 15, "the command's reply")
    if not reply()["ok"]:
        # Just booted: the relay's minimum off time (5 s from power-up) still runs. The refusal says
        # why and when to retry, as a gateway would.
        assert reply()["reason"] == "min_off_time" and 0 < reply()["retry_after_ms"] <= 5000
        time.sleep(reply()["retry_after_ms"] / 1000 + 0.2)
        cid = receiver.command("vnode-1", 0, "on")
        wait_until(reply, 15, "the retried command's reply")
    assert reply()["ok"] and reply()["state"] == "on"
    # The EV charger now draws current on its circuit and the telemetry shows it.
    wait_until(lambda: receiver.snapshot()["latest"]["vnode-1"]["tele"]["ch"][1]["irms_ma"] > 15000, 15,
               "the EV current")

    node.stop()  # like a power cut: no DISCONNECT, so the broker publishes the last will
    wait_until(lambda: receiver.snapshot()["online"]["vnode-1"]["online"] is False, 40, "the last will")
