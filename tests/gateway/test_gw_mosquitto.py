"""`mosquitto-config` output run by a real Mosquitto: passwords work, nodes stay in their own topics."""
import json
import time

import pytest
from typer.testing import CliRunner

from gwkit import Client, ConfiguredBroker, secret, wait, write_config
from gridhive.broker import free_port
from gridhive.gateway.cli import app
from gridhive.gateway.config import load_config
from gridhive.gateway.mosquitto import node_password, password_hash

pytestmark = pytest.mark.broker


@pytest.fixture(params=["mosquitto_passwd", "python"])
def broker(request, tmp_path):
    port = free_port()
    path = write_config(tmp_path / "gateway.toml", broker_port=port, broker_password="gw-pass",
                        nodes=("node-a", "node-b"))
    # pytest's tmp folders are private to root, so mosquitto must not drop to its own user here.
    args = ["mosquitto-config", "--config", str(path), "--out", str(tmp_path / "mq"), "--run-as", "root"]
    result = CliRunner().invoke(app, args + (["--python-hash"] if request.param == "python" else []))
    assert result.exit_code == 0, result.output
    assert f"hashed by {request.param}" in result.output and "4 users" in result.output
    b = ConfiguredBroker(tmp_path / "mq" / "mosquitto.conf", port)
    b.start()
    yield b
    b.stop()


def node(port, name, **kw):
    return Client(port, name, node_password(secret(name)), client_id=name, **kw)


def test_passwords_are_checked(broker):
    assert node(broker.port, "node-a").connect_rc == 0
    assert Client(broker.port, "node-a", "wrong").connect_rc != 0
    assert Client(broker.port).connect_rc != 0  # anonymous
    assert Client(broker.port, "gateway", "gw-pass").connect_rc == 0


def test_the_firmware_logs_in_with_the_login_provisioning_gave_it(tmp_path):
    """A node's config (as `flash provision` and virtual homes write it) holds the login
    mosquitto-config derives from its secret: the real firmware joins the gateway's broker."""
    from gridhive.hardware.virtual_node import VirtualNode

    port, root = free_port(), tmp_path / "node-a"
    root.mkdir()
    (root / "config.json").write_text(json.dumps({"secret_hex": secret("node-a").hex()}))  # kept by provisioning
    path = write_config(tmp_path / "gateway.toml", broker_port=port, broker_password="gw-pass", nodes=("node-a",))
    args = ["mosquitto-config", "--config", str(path), "--out", str(tmp_path / "mq"), "--run-as", "root"]
    assert CliRunner().invoke(app, args).exit_code == 0
    broker = ConfiguredBroker(tmp_path / "mq" / "mosquitto.conf", port)
    broker.start()
    gw = Client(port, "gateway", "gw-pass", client_id="gw")
    gw.subscribe("gh/#")
    vnode = VirtualNode(root, "node-a", "127.0.0.1", port, "fridge", seed=0, period_s=1)
    try:
        assert vnode.config["mqtt"]["user"] == "node-a"
        vnode.start()
        wait(lambda: gw.messages("gh/node-a/tele"), 20, "a reading from the node")
        assert vnode.firmware.link.up
    finally:
        vnode.stop()
        gw.close()
        broker.stop()


def test_a_node_reaches_only_its_own_topics(broker):
    gw = Client(broker.port, "gateway", "gw-pass", client_id="gw")
    gw.subscribe("gh/#")
    a = node(broker.port, "node-a")
    a.publish("gh/node-a/tele", b"mine").wait_for_publish(5)
    a.publish("gh/node-b/tele", b"forged").wait_for_publish(5)
    a.publish("gh/node-a/cmd", b"not a node's to send").wait_for_publish(5)
    wait(lambda: gw.messages("gh/node-a/tele"), 5, "node-a's own telemetry")

    # Mosquitto 2.0 grants the subscription and filters each delivery by the ACL (later versions
    # refuse it with 0x80); either way nothing of node-b's may arrive.
    a.subscribe("gh/node-b/cmd")
    assert a.subacks[-1] in ([1], [128])
    a.subscribe("gh/+/cmd")
    a.subscribe("gh/node-a/ack")
    gw.publish("gh/node-b/cmd", b"for b").wait_for_publish(5)
    gw.publish("gh/node-a/cmd", b"for a").wait_for_publish(5)
    gw.publish("gh/node-a/ack", b"ack a").wait_for_publish(5)
    wait(lambda: len(a.messages()) >= 2, 5, "node-a's own cmd and ack")
    time.sleep(0.3)
    assert sorted(t for t, _, _ in a.messages()) == ["gh/node-a/ack", "gh/node-a/cmd"]
    payloads = [p for _, p, _ in gw.messages()]  # the gateway also hears its own three
    assert b"mine" in payloads and b"forged" not in payloads and b"not a node's to send" not in payloads


def test_home_assistant_may_only_command_relay_switches(broker):
    gw = Client(broker.port, "gateway", "gw-pass", client_id="gw")
    gw.subscribe("#")
    ha = Client(broker.port, "homeassistant", "ha-pass", client_id="ha")
    ha.publish("gridhive/gw1/node-a/relay/0/set", b"ON").wait_for_publish(5)
    ha.publish("gh/node-a/cmd", b"raw").wait_for_publish(5)
    ha.publish("homeassistant/status", b"online").wait_for_publish(5)
    wait(lambda: len(gw.messages()) >= 2, 5, "HA's allowed messages")
    time.sleep(0.3)
    assert sorted(t for t, _, _ in gw.messages()) == ["gridhive/gw1/node-a/relay/0/set", "homeassistant/status"]


def test_python_hash_matches_mosquitto_format():
    h = password_hash("secret", salt=bytes(12))
    assert h.startswith("$7$101$AAAAAAAAAAAAAAAA$") and len(h.split("$")[4]) == 88


def test_without_a_gateway_password_the_command_names_the_key(tmp_path):
    path = write_config(tmp_path / "gateway.toml", broker_port=1883)
    result = CliRunner().invoke(app, ["mosquitto-config", "--config", str(path), "--out", str(tmp_path / "mq")])
    assert result.exit_code == 2 and "broker.password" in result.output
    assert load_config(path, env={}).broker.password == ""
