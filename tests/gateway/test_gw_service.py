"""The gateway service in-process on a real Mosquitto: acks, relay commands over HTTP, metrics, uplink."""
import json
import sqlite3
import time
import urllib.request

import pytest

from gwkit import (Client, FakeController, GatewayThread, NodeResponder, NodeSim, acked_seqs, http, now_ms, wait,
                   write_config)
from ghnode import wire
from gridhive.broker import MosquittoBroker, free_port
from gridhive.controller.uplink import parse_status, parse_uplink
from gridhive.gateway.uplink import InflightWindow, parse_ack

pytestmark = pytest.mark.broker


def node_client(mosquitto, name="n1"):
    c = Client(mosquitto.port, client_id=f"{name}-test")
    c.subscribe(wire.topic(name, "ack"))
    return c


def test_stored_messages_are_acked_by_seq_with_the_nodes_boot(gateway, mosquitto):
    n1 = NodeSim("n1", boot=42)
    c = node_client(mosquitto)
    c.publish(*n1.status()[:2], retain=True)
    items = [n1.tele(now_ms() + i) for i in range(5)]
    for topic, payload, _ in items + items[:2]:  # the first two again, as after a reconnect
        c.publish(topic, payload)
    wait(lambda: acked_seqs(c, "n1") == {1, 2, 3, 4, 5} and gateway.gw.ingest.duplicates == 2, 10, "acks")
    acks = [wire.decode(p, lambda n: n1.secret) for _, p, _ in c.messages("gh/n1/ack")]
    assert {a["boot"] for a in acks} == {42}
    stats = gateway.call(gateway.gw.stats)
    assert stats["stored_messages"] == 5 and stats["duplicates"] == 2 and stats["rejected_total"] == 0


def test_small_batches_cut_while_one_is_being_written_store_everything_once(tmp_path, mosquitto):
    """commit_max_messages 7: batches are cut while the writer thread stores the previous one (and
    reading from the broker pauses); a message repeated while its batch is being written is a
    duplicate: acknowledged, stored once."""
    names = ("n1", "n2", "n3")
    gwt = GatewayThread(write_config(tmp_path / "g.toml", broker_port=mosquitto.port, nodes=names),
                        env={"GRIDHIVE_GATEWAY__INGEST__COMMIT_MAX_MESSAGES": "7"}).start()
    clients = {n: node_client(mosquitto, n) for n in names}
    try:
        sims = {n: NodeSim(n, boot=5) for n in names}
        for n, sim in sims.items():
            clients[n].publish(*sim.status()[:2], retain=True)
        again = {}
        for i in range(100):
            for n, sim in sims.items():
                topic, payload, _ = sim.tele(now_ms() + i)
                clients[n].publish(topic, payload)
                if n in again:  # the previous round's message again: its batch is likely being written
                    clients[n].publish(*again.pop(n))
                if i % 10 == 3:
                    again[n] = (topic, payload)
            time.sleep(0.002)
        wait(lambda: all(acked_seqs(clients[n], n) == set(range(1, 101)) for n in names), 30, "every seq acked")
        wait(lambda: gwt.call(gwt.gw.stats)["pending"] == 0, 10, "nothing pending")
        stats = gwt.call(gwt.gw.stats)
        assert stats["stored_messages"] == 300
        assert stats["outbox_items"] == 0  # no uplink here: no copies that nothing would ever take out
        assert stats["duplicates"] == 30 and stats["rejected_total"] == 0
        assert gwt.gw.metrics.registry.get_sample_value("gridhive_gateway_commit_seconds_count") >= 10
    finally:
        for c in clients.values():
            c.close()
        gwt.stop()


def test_relay_commands_over_http_and_python(gateway, mosquitto):
    n1 = NodeSim("n1", boot=7)
    c = node_client(mosquitto)
    c.publish(*n1.status()[:2], retain=True)
    wait(lambda: gateway.gw.ingest.tracks.get("n1") and gateway.gw.ingest.tracks["n1"].boot == 7, 10, "boot")
    responder = NodeResponder(mosquitto.port, n1)
    status, body = http("POST", gateway.url("/api/nodes/n1/relays/0"), {"action": "on"})
    assert status == 200 and body["ok"] and body["state"] == "on" and body["relay"] == 0, body
    result = gateway.call(gateway.gw.switch_relay, "n1", 0, "off")
    assert result.ok and result.state == "off" and result.cid == body["cid"] + 1
    assert [(x["boot"], x["cid"], x["action"]) for x in responder.commands] == [(7, 1, "on"), (7, 2, "off")]

    responder.refuse = "min_on_time"
    status, body = http("POST", gateway.url("/api/nodes/n1/relays/0"), {"action": "on"})
    assert status == 409 and body["result"]["reason"] == "min_on_time" and body["result"]["retry_after_ms"] == 5000

    responder.silent = True
    started = time.monotonic()
    status, body = http("POST", gateway.url("/api/nodes/n1/relays/0"), {"action": "on", "timeout_s": 0.5})
    assert status == 504 and "did not reply to command 4" in body["error"] and "within 0.5 s" in body["error"]
    assert time.monotonic() - started < 3

    assert http("POST", gateway.url("/api/nodes/n9/relays/0"), {"action": "on"})[0] == 404
    assert http("POST", gateway.url("/api/nodes/n1/relays/0"), {"action": "explode"})[0] == 422
    assert http("POST", gateway.url("/api/nodes/n1/relays/3"), {"action": "on"})[0] == 422  # not in the registry
    status, body = http("POST", gateway.url("/api/nodes/n2/relays/0"), {"action": "on"})
    assert status == 409 and "boot id is unknown" in body["error"]


def test_metrics_and_stats_count_rejections_by_reason(gateway, mosquitto):
    n1 = NodeSim("n1")
    c = node_client(mosquitto)
    topic, payload, msg = n1.tele(now_ms())
    c.publish(topic, payload)
    c.publish(topic, b"{garbage")
    c.publish(topic, wire.encode(msg, b"\x01" * 32))
    wait(lambda: http("GET", gateway.url("/api/stats"))[1]["stored_messages"] == 1 and
         gateway.gw.ingest.rejected["bad_mac"] == 1 and gateway.gw.ingest.rejected["not_json"] == 1, 10, "all three")
    with urllib.request.urlopen(gateway.url("/metrics"), timeout=5) as r:
        text = r.read().decode()
    assert 'gridhive_gateway_messages_rejected_total{reason="bad_mac"} 1.0' in text
    assert 'gridhive_gateway_messages_accepted_total{kind="tele"} 1.0' in text
    assert "gridhive_gateway_commit_seconds_bucket" in text and "gridhive_gateway_outbox_items" in text
    status, stats = http("GET", gateway.url("/api/stats"))
    assert status == 200 and stats["rejected"] == {"bad_mac": 1, "not_json": 1} and stats["accepted"] == {"tele": 1}
    status, energy = http("GET", gateway.url(f"/api/energy?start_ms=0&end_ms={now_ms() + 10**9}"))
    assert status == 200 and energy["interval_s"] == 900


def test_uplink_stores_and_forwards_through_a_controller_outage(tmp_path, mosquitto):
    ctl_port = free_port()
    gwt = GatewayThread(write_config(tmp_path / "g.toml", broker_port=mosquitto.port, uplink_port=ctl_port)).start()
    ctl_broker = MosquittoBroker(tmp_path / "ctl", port=ctl_port)
    try:
        nodes = [NodeSim("n1"), NodeSim("n2")]
        c = Client(mosquitto.port, client_id="nodes")
        for i in range(130):
            for n in nodes:
                c.publish(*n.tele(now_ms() + i)[:2])
        wait(lambda: gwt.call(gwt.gw.storage.outbox_depth)[0] == 260, 15, "260 messages in the outbox")
        ctl_broker.start()  # the controller comes back
        ctl = FakeController(ctl_port)
        wait(lambda: len(ctl.items()) == 260 and gwt.call(gwt.gw.storage.outbox_depth) == (0, 0), 20,
             "the outbox to drain")
        gseqs = [b["gseq"] for b in ctl.batches]
        assert gseqs == sorted(gseqs) and len(ctl.batches[0]["items"]) == 100
        assert all(len(b["items"]) <= 100 and b["gw"] == "gw1" and b["v"] == 1 for b in ctl.batches)
        assert ctl.items()[("n2", 130)]["t"] == "tele"
        status = wait(lambda: ctl.statuses(), 10, "gateway status")[-1]
        assert status["online"] and status["gw"] == "gw1" and [n["node"] for n in status["nodes"]] == ["n1", "n2"]
        check_against_the_controller(ctl)
        gwt.stop()
        late = Client(ctl_port, client_id="late")  # a clean stop leaves the retained status offline
        late.subscribe("ghc/gw1/status")
        assert json.loads(wait(lambda: late.messages(), 5, "retained status")[-1][1])["online"] is False
    finally:
        gwt.stop()
        ctl_broker.stop()


def test_a_failing_outbox_write_loses_nothing(tmp_path, mosquitto, caplog):
    """The disk refuses the uplink's cuts for a while (a trigger aborts every new batch): the
    gateway says so once, keeps storing and acking, and when the disk takes them again every
    stored message reaches the controller once, in gseqs without a gap."""
    ctl_port = free_port()
    ctl_broker = MosquittoBroker(tmp_path / "ctl", port=ctl_port)
    ctl_broker.start()
    ctl = FakeController(ctl_port)
    gwt = GatewayThread(write_config(tmp_path / "g.toml", broker_port=mosquitto.port, uplink_port=ctl_port)).start()
    db = sqlite3.connect(gwt.gw.cfg.db_path)
    try:
        db.execute("CREATE TRIGGER refuse_cuts BEFORE INSERT ON outbox_batch BEGIN "
                   "SELECT RAISE(ABORT, 'disk trouble'); END")
        db.commit()
        nodes = [NodeSim("n1"), NodeSim("n2")]
        c = Client(mosquitto.port, client_id="nodes")
        for n in nodes:
            c.subscribe(wire.topic(n.node, "ack"))
        for i in range(60):
            for n in nodes:
                c.publish(*n.tele(now_ms() + i)[:2])
            time.sleep(0.01)  # several commits, each followed by a cut that fails
        wait(lambda: all(acked_seqs(c, n.node) == set(range(1, 61)) for n in nodes), 15, "every seq acked")
        assert gwt.call(gwt.gw.storage.outbox_depth) == (120, 0) and ctl.items() == {}
        failures = [r for r in caplog.records if "cutting batches failed" in r.getMessage()]
        assert len(failures) == 1 and "disk trouble" in failures[0].getMessage()
        db.execute("DROP TRIGGER refuse_cuts")
        db.commit()
        wait(lambda: len(ctl.items()) == 120 and gwt.call(gwt.gw.storage.outbox_depth) == (0, 0), 20,
             "the outbox to drain")
        assert sorted(b["gseq"] for b in ctl.batches) == list(range(1, len(ctl.batches) + 1))
        assert any("cutting batches works again" in r.getMessage() for r in caplog.records)
    finally:
        db.close()
        gwt.stop()
        ctl_broker.stop()


def check_against_the_controller(ctl):
    """The controller's own parser (built in parallel from docs/PROTOCOL.md) accepts what we send."""
    for payload in ctl.payloads:
        parsed = parse_uplink("gw1", payload)
        assert not parsed.rejected and len(parsed.items) == len(json.loads(payload)["items"])
    for _, payload, _ in ctl.client.messages("ghc/gw1/status"):
        assert parse_status("gw1", payload).gw == "gw1"


def test_inflight_window_and_ack_parsing():
    w = InflightWindow(size=2, retry_ms=1000)
    w.sent(1, 0)
    w.sent(2, 500)
    assert w.room() == 0 and w.due(1000) == [1] and w.due(1500) == [1, 2]
    assert w.acked([2, 9]) == {2: 500} and w.room() == 1
    w.restart()
    assert w.last_sent == 0 and w.room() == 2
    assert parse_ack(b'{"v":1,"gw":"gw1","acks":[3,4]}', "gw1") == [3, 4]
    for bad in (b'{"v":1,"gw":"gw2","acks":[3]}', b'{"v":1,"gw":"gw1","acks":[true]}', b"nope"):
        with pytest.raises(ValueError):
            parse_ack(bad, "gw1")


def make_tls_files(tmp_path):
    """A CA and a server certificate for 127.0.0.1, made with `cryptography`."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def cert(subject, issuer, key, sign_key, ca, san=None):
        now = datetime.datetime.now(datetime.timezone.utc)
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
             .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(san))]), False)
        return b.sign(sign_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = cert("test ca", "test ca", ca_key, ca_key, True)
    server = cert("controller", "test ca", key, ca_key, False, san="127.0.0.1")
    pem = serialization.Encoding.PEM
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(pem))
    (tmp_path / "server.pem").write_bytes(server.public_bytes(pem))
    (tmp_path / "server.key").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                            serialization.NoEncryption()))


def test_uplink_over_tls(tmp_path, mosquitto):
    from gridhive.broker import mosquitto_path
    from gwkit import ConfiguredBroker
    make_tls_files(tmp_path)
    tls_port, plain_port = free_port(), free_port()
    conf = tmp_path / "ctl.conf"
    conf.write_text(f"user root\nallow_anonymous true\npersistence false\nlistener {plain_port} 127.0.0.1\n"
                    f"listener {tls_port} 127.0.0.1\ncafile {tmp_path / 'ca.pem'}\n"
                    f"certfile {tmp_path / 'server.pem'}\nkeyfile {tmp_path / 'server.key'}\n")
    assert mosquitto_path()
    ctl_broker = ConfiguredBroker(conf, plain_port)
    ctl_broker.start()
    config = write_config(tmp_path / "g.toml", broker_port=mosquitto.port, uplink_port=tls_port)
    env = {"GRIDHIVE_GATEWAY__UPLINK__TLS": "true", "GRIDHIVE_GATEWAY__UPLINK__CA_FILE": f'"{tmp_path / "ca.pem"}"'}
    gwt = GatewayThread(config, env=env).start()
    try:
        ctl = FakeController(plain_port)
        Client(mosquitto.port, client_id="n1").publish(*NodeSim("n1").tele(now_ms())[:2])
        wait(lambda: ("n1", 1) in ctl.items(), 10, "the reading over TLS")
        assert gwt.gw.uplink.link.connected
    finally:
        gwt.stop()
        ctl_broker.stop()


def test_a_long_outage_drains_in_order(tmp_path, mosquitto):
    """Three and a half hours of 20 nodes (7 messages a minute each) waiting in the outbox."""
    from gridhive.gateway.storage import Storage
    ctl_port = free_port()
    config = write_config(tmp_path / "g.toml", broker_port=mosquitto.port, uplink_port=ctl_port)
    store = Storage(tmp_path / "data" / "gateway.sqlite3")
    n = 20 * 7 * 210
    rows = [(json.dumps({"node": f"n{i % 20}", "seq": i, "t": "tele", "v": 1}, sort_keys=True),) for i in range(n)]
    with store._tx() as cur:
        cur.executemany("INSERT INTO outbox_item (body) VALUES (?)", rows)
    store.close()
    ctl_broker = MosquittoBroker(tmp_path / "ctl", port=ctl_port)
    ctl_broker.start()
    ctl = FakeController(ctl_port)
    started = time.monotonic()
    gwt = GatewayThread(config).start()
    try:
        wait(lambda: len(ctl.items()) == n, 120, f"{n} items to drain", interval_s=0.1)
        elapsed = time.monotonic() - started
        seqs = [i["seq"] for b in ctl.batches for i in b["items"]]
        assert seqs == sorted(seqs)  # oldest first
        wait(lambda: gwt.call(gwt.gw.storage.outbox_depth) == (0, 0), 10, "acked batches deleted")
        print(f"\nuplink drain: {n} items in {elapsed:.1f} s = {n / elapsed:.0f} items/s")
    finally:
        gwt.stop()
        ctl_broker.stop()


def test_mqtt_3_1_1_on_the_embedded_broker(tmp_path):
    """The demo's amqtt broker speaks only MQTT 3.1.1: broker.mqtt_version = "3.1.1" works there."""
    from gridhive.broker import EmbeddedBroker
    broker = EmbeddedBroker()
    broker.start()
    config = write_config(tmp_path / "g.toml", broker_port=broker.port, uplink_port=broker.port)
    gwt = GatewayThread(config, env={"GRIDHIVE_GATEWAY__BROKER__MQTT_VERSION": '"3.1.1"'}).start()
    try:
        ctl = FakeController(broker.port)
        n1 = NodeSim("n1", boot=3)
        c = Client(broker.port, client_id="n1")
        c.subscribe("gh/n1/ack")
        c.publish(*n1.status()[:2])
        for _ in range(3):
            c.publish(*n1.tele(now_ms())[:2])
        wait(lambda: acked_seqs(c, "n1") == {1, 2, 3}, 10, "acks over MQTT 3.1.1")
        wait(lambda: len(ctl.items()) == 3, 10, "the uplink over MQTT 3.1.1")
        assert gwt.call(gwt.gw.stats)["rejected_total"] == 0  # our own acks are not heard back
    finally:
        gwt.stop()
        broker.stop()
