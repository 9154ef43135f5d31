"""The gateway as a real process on a Mosquitto set up by `mosquitto-config`: a fuzz storm, and
SIGKILL / broker restart / controller outage with every reading stored and forwarded exactly once."""
import json
import random
import re
import sqlite3
import time
from collections import Counter

import pytest
from typer.testing import CliRunner

from gwkit import (Client, ConfiguredBroker, FakeController, FleetNode, GatewayProcess, NodeSim, acked_seqs,
                   now_ms, secret, wait, write_config)
from ghnode import wire
from gridhive.broker import MosquittoBroker, free_port
from gridhive.gateway.cli import app

pytestmark = pytest.mark.broker
NODES = ("n1", "n2", "n3", "n4")


@pytest.fixture
def site(tmp_path):
    """A broker with the gateway's own password file and ACL, and a config for the gateway."""
    port, http_port, ctl_port = free_port(), free_port(), free_port()
    config = write_config(tmp_path / "gateway.toml", broker_port=port, broker_password="gw-pass", nodes=NODES,
                          uplink_port=ctl_port, http_port=http_port, ack_batch_ms=50)
    result = CliRunner().invoke(app, ["mosquitto-config", "-c", str(config), "-o", str(tmp_path / "mq"),
                                      "--run-as", "root"])
    assert result.exit_code == 0, result.output
    broker = ConfiguredBroker(tmp_path / "mq" / "mosquitto.conf", port)
    broker.start()
    site = type("Site", (), dict(port=port, http_port=http_port, ctl_port=ctl_port, config=config,
                                 tmp=tmp_path, broker=broker))
    yield site
    broker.stop()


def gateway_client(site, client_id):
    return Client(site.port, "gateway", "gw-pass", client_id=client_id)


def build_storm(rng: random.Random):
    """(topic, payload) list: valid, duplicate and bad messages; expected counts by outcome."""
    sims = {n: NodeSim(n, boot=100 + i) for i, n in enumerate(NODES)}
    now = now_ms()
    valid, bad = [], []
    expected = Counter()

    def add_bad(reason, topic, payload, count=1):
        bad.append((topic, payload))
        expected[reason] += count

    for i in range(500):
        for n, sim in sims.items():
            item = sim.tele(now + i) if i % 10 else sim.health(now + i)
            valid.append(item)
    for _ in range(2000):
        add_bad("not_json", "gh/n1/tele", rng.randbytes(rng.randint(1, 300)).replace(b"{", b"("))
    for _ in range(600):
        add_bad("too_large", "gh/n2/tele", b"{" + b" " * rng.randint(4097, 20_000) + b"}")
    for k in range(1500):  # forged: right shape, wrong key
        topic, _, msg = valid[k % len(valid)]
        add_bad("bad_mac", topic, wire.encode({**msg, "seq": 10**6 + k}, rng.randbytes(32)))
    for k in range(500):  # tampered after signing
        topic, payload, msg = valid[k]
        add_bad("bad_mac", topic, payload.replace(b'"seq":%d' % msg["seq"], b'"seq":%d' % (msg["seq"] + 7)))
    for k in range(500):
        msg = {**valid[k][2], "node": "n9"}
        add_bad("unknown_node", "gh/n9/tele", wire.encode(msg, secret("n9")))
    for k in range(300):
        add_bad("missing_mac", valid[k][0], wire.canonical(valid[k][2]))
    for reason, change in (("bad_version", {"v": 2}), ("bad_kind", {"t": "boom"}), ("bad_field", {"seq": "7"}),
                           ("bad_string", {"name": "caf\u00e9"})):
        for k in range(300):
            topic, _, msg = valid[k]
            add_bad(reason, topic, wire.encode({**msg, **change}, secret(msg["node"]))
                    if reason != "bad_string" else _non_ascii(msg))
    for k in range(300):  # a node's genuine message under another node's topic
        topic, payload, msg = valid[k]
        add_bad("topic_mismatch", wire.topic("n4" if msg["node"] != "n4" else "n1", msg["t"]), payload)
    for k in range(200):
        add_bad("bad_topic", "gh/n1/whatever", valid[k][1])
    # Authentic but impossible: quarantined and acknowledged, never stored as readings.
    quarantined = []
    for k in range(150):
        sim = sims[NODES[k % 4]]
        for reason, kw in (("negative_energy", {}), ("power_out_of_range", {"power_w": (250_000, 0)}),
                           ("future_timestamp", {"ts": now + 86_400_000}), ("bad_schema", {})):
            topic, payload, msg = sim.tele(kw.pop("ts", now), **kw)
            if reason == "negative_energy":
                msg["ch"][1]["energy_out_wh"] = -1
            elif reason == "bad_schema":
                msg["ch"][0]["n"] = 42
            add_bad(reason, topic, wire.encode(msg, sim.secret))
            quarantined.append((msg["node"], msg["seq"]))
    duplicates = [valid[rng.randrange(len(valid))][:2] for _ in range(1500)]
    storm = [(t, p) for t, p, _ in valid] + bad + duplicates
    rng.shuffle(storm)
    return storm, valid, expected, len(duplicates), quarantined


def _non_ascii(msg):
    # A node cannot sign this (wire refuses non-ASCII), so build the bytes by hand.
    body = json.dumps({**msg, "name": "caf\u00e9", "mac": "0" * 64}, ensure_ascii=False)
    return body.encode()


def test_fuzz_storm_every_bad_message_counted_every_valid_one_stored(site):
    rng = random.Random(3)
    storm, valid, expected, n_dup, quarantined = build_storm(rng)
    assert len(storm) >= 10_000
    gw = GatewayProcess(site.config, site.tmp, env={"GRIDHIVE_GATEWAY__UPLINK__ENABLED": "false"})
    gw.start(site.http_port)
    try:
        watcher = gateway_client(site, "watcher")
        watcher.subscribe("gh/+/ack")
        fuzzer = gateway_client(site, "fuzzer")
        started = time.monotonic()
        for topic, payload in storm:
            fuzzer.publish(topic, payload)
        total = len(storm)

        def done():
            s = gw.get("/api/stats")
            return s if s["accepted_total"] + s["rejected_total"] + s["duplicates"] == total and not s["pending"] \
                else None
        stats = wait(done, 120, f"the gateway to process {total} messages", interval_s=0.25)
        elapsed = time.monotonic() - started
        assert stats["accepted_total"] == len(valid) and stats["stored_messages"] == len(valid)
        assert stats["rejected"] == dict(expected), (stats["rejected"], dict(expected))
        # A duplicate that arrives before its original makes the original the duplicate: same count.
        assert stats["duplicates"] == n_dup
        assert stats["quarantined"] == len(quarantined)
        for node in NODES:
            want = {m["seq"] for _, _, m in valid if m["node"] == node} | {s for n, s in quarantined if n == node}
            wait(lambda: acked_seqs(watcher, node) >= want, 10, f"acks for {node}")
            assert acked_seqs(watcher, node) == want
        assert gw.proc.poll() is None and gw.get("/api/stats")["broker_connected"]
        print(f"\nfuzz: {total} messages ({len(valid)} valid, {sum(expected.values())} bad, {n_dup} duplicates) "
              f"processed in {elapsed:.1f} s = {total / elapsed:.0f} msg/s")
    finally:
        assert gw.stop() == 0
    # Each (node, reason) was logged once, not once per message.
    lines = re.findall(r"rejected (\w+) from (\S+):", gw.log.read_text())
    assert len(lines) == len(set(lines)) and len(lines) < 100
    db = sqlite3.connect(site.tmp / "data" / "gateway.sqlite3")
    assert db.execute("SELECT count(*) FROM message").fetchone()[0] == len(valid)
    reasons = dict(db.execute("SELECT reason, count(*) FROM quarantine GROUP BY reason").fetchall())
    assert reasons == {r: 150 for r in ("negative_energy", "power_out_of_range", "future_timestamp", "bad_schema")}


def test_sigkill_broker_restart_and_controller_outage_lose_and_duplicate_nothing(site):
    ctl_broker = MosquittoBroker(site.tmp / "ctl", port=site.ctl_port)
    ctl_broker.start()
    controller = FakeController(site.ctl_port)
    gw = GatewayProcess(site.config, site.tmp)
    gw.start(site.http_port)  # and subscribed: a reading first seen as a resend adds no energy
    fleet = [FleetNode(site.port, n, rate_hz=60, resend_s=2.0) for n in NODES[:3]]
    try:
        for node in fleet:
            node.start()
        time.sleep(2)
        gw.kill()  # mid-stream: a batch may be committed but not acked, or received but not committed
        time.sleep(1.5)
        gw.start(site.http_port)
        time.sleep(1.5)
        site.broker.stop()  # the nodes and the gateway lose their broker
        time.sleep(1)
        site.broker.start()
        time.sleep(1.5)
        ctl_broker.stop()  # the controller is away; the gateway keeps everything in its outbox
        time.sleep(2)
        gw.kill()  # and the gateway dies again during the outage
        gw.start(site.http_port)
        time.sleep(1)
        ctl_broker.start()
        time.sleep(1)
        for node in fleet:
            node.producing.clear()
        wait(lambda: all(node.pending() == 0 for node in fleet), 60, "every reading acked to its node",
             interval_s=0.2)
        produced = {(node.sim.node, s) for node in fleet for s in node.produced}
        wait(lambda: set(controller.items()) >= produced, 60, "every reading at the controller", interval_s=0.2)
        wait(lambda: gw.get("/api/stats")["outbox_batches"] == 0, 30, "the outbox to empty")
    finally:
        for node in fleet:
            node.close()
        gw.stop()
        controller.close()
        ctl_broker.stop()
    db = sqlite3.connect(site.tmp / "data" / "gateway.sqlite3")
    stored = set(db.execute("SELECT node, seq FROM message").fetchall())
    assert stored == produced and len(produced) > 500
    for node in fleet:
        # Exactly once in energy, too: the interval energies add up to the counter's rise.
        total = db.execute("SELECT sum(import_wh) FROM interval_energy WHERE node=? AND ch=0",
                           (node.sim.node,)).fetchone()[0]
        assert total == len(node.produced) - 1  # each reading adds 1 Wh; the first is the baseline
    assert set(controller.items()) == produced
    by_gseq = {}
    for batch in controller.batches:
        assert by_gseq.setdefault(batch["gseq"], batch["items"]) == batch["items"]  # a resend is identical
    assert sorted(by_gseq) == list(range(1, max(by_gseq) + 1))  # gseq never reused or skipped
    delivered = Counter((i["node"], i["seq"]) for items in by_gseq.values() for i in items)
    assert max(delivered.values()) == 1  # distinct batches never carry the same reading twice
    print(f"\nsigkill: {len(produced)} readings from {len(fleet)} nodes, {len(controller.batches)} batch "
          f"deliveries for {len(by_gseq)} gseqs")
