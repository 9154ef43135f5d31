"""ControllerService on a real Mosquitto broker, with each database back end."""
import asyncio
import json
import threading

import pytest
from typer.testing import CliRunner

from gridhive.controller.cli import app
from gridhive.controller.service import ControllerService
from gridhive.controller.store import open_store

from ctl_helpers import GatewayOutbox, batch, node_message, payload, wait_for

pytestmark = pytest.mark.broker


class RunningController:
    """The service on its own event loop in a thread, as `gridhive ctl serve` runs it."""

    def __init__(self, db_url, broker):
        self.service = ControllerService(db_url, broker.host, broker.port, client_id="ctl-test")
        self.loop = asyncio.new_event_loop()
        self.stop_event = asyncio.Event()
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        wait_for(self.service.ready.is_set, 10, "the controller to subscribe")

    def _run(self):
        try:
            self.loop.run_until_complete(self.service.run(self.stop_event))
        except BaseException as e:  # surfaced by the test
            self.error = e

    def stop(self):
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(10)
        assert not self.thread.is_alive() and self.error is None


@pytest.fixture
def controller(db_url, mosquitto):
    running = RunningController(db_url, mosquitto)
    yield running
    if running.thread.is_alive():
        running.stop()


@pytest.fixture
def outbox(mosquitto):
    box = GatewayOutbox(mosquitto.host, mosquitto.port, "gw-1")
    yield box
    box.close()


def test_batches_are_acknowledged_only_after_they_are_committed(controller, mosquitto, db_url):
    seen_in_db = []

    def on_ack(gseqs):  # on paho's thread, with a connection of its own
        store = open_store(db_url)
        keys = store.batch_keys()
        store.close()
        seen_in_db.extend(("gw-1", g) in keys for g in gseqs)

    box = GatewayOutbox(mosquitto.host, mosquitto.port, "gw-1", on_ack=on_ack)
    try:
        for gseq in range(1, 41):
            box.send(gseq, batch("gw-1", gseq, [node_message(f"house-{i}", gseq) for i in range(5)]))
        assert box.wait_all_acked(15)
    finally:
        box.close()
    assert len(seen_in_db) == 40 and all(seen_in_db)
    assert controller.service.counters()["items_stored"] == 200


def test_a_resent_batch_is_acknowledged_again_and_stored_once(controller, outbox, db_url):
    b = batch("gw-1", 7, [node_message("house-1", 1), node_message("house-1", 2)])
    outbox.send(7, b)
    assert outbox.wait_all_acked(10)
    outbox.send(7, b)
    wait_for(lambda: outbox.ack_count.get(7) == 2, 10, "the second ack")
    counters = controller.service.counters()
    assert counters["batches_stored"] == 1 and counters["batches_duplicate"] == 1 and counters["items_stored"] == 2
    controller.stop()
    store = open_store(db_url)
    assert store.message_counts() == {"house-1": 2}
    store.close()


def test_bad_payloads_are_counted_and_the_service_keeps_running(controller, outbox):
    good_item = node_message("house-1", 1)
    bad = [
        ("ghc/gw-1/up", b"{nope"),
        ("ghc/gw-1/up", payload(batch("gw-2", 1, []))),
        ("ghc/gw-1/up", payload(batch("gw-1", 1, [good_item] * 101))),
        ("ghc/gw-1/up", payload(batch("gw-1", 1, []) | {"v": 2})),
        ("ghc/gw-1/up", payload(batch("gw-1", -5, []))),
        ("ghc/Bad_Id/up", payload(batch("Bad_Id", 1, []))),
        ("ghc/gw-1/status", payload({"v": 1, "gw": "gw-1", "online": "yes"})),
        ("ghc/gw-1/up", b"\x00" * 10),
    ]
    for topic, data in bad:
        outbox.publish_raw(topic, data)
    # One bad item in a good batch: the item is refused, the batch stored and acknowledged.
    outbox.send(1, batch("gw-1", 1, [good_item, good_item | {"t": "gossip"}]))
    assert outbox.wait_all_acked(10)
    counters = controller.service.counters()
    assert {k: v for k, v in counters.items() if k.startswith("rejected:")} == {
        "rejected:not_json": 2, "rejected:gw_mismatch": 1, "rejected:too_many_items": 1,
        "rejected:bad_version": 1, "rejected:bad_gseq": 1, "rejected:bad_gateway_id": 1,
        "rejected:bad_online": 1, "rejected:item_bad_kind": 1}
    assert counters["items_stored"] == 1 and controller.thread.is_alive()


def test_fleet_status_from_gateway_status_and_health(controller, outbox, db_url):
    status = {"v": 1, "gw": "gw-1", "online": True, "fw": "0.4.0", "nodes": [
        {"node": "house-1", "online": True, "fw": "1.2.0", "last_seen_ms": 1},
        {"node": "house-2", "online": False}]}
    outbox.publish_raw("ghc/gw-1/status", payload(status), retain=True)
    outbox.send(1, batch("gw-1", 1, [node_message("house-1", 3, "health", safe_mode=True, error="no CT on ch0"),
                                     node_message("house-3", 1)]))
    assert outbox.wait_all_acked(10)
    wait_for(lambda: controller.service.counters().get("statuses") == 1, 10, "the status")

    runner = CliRunner()
    result = runner.invoke(app, ["fleet", "status", "--db", db_url, "--json"])
    assert result.exit_code == 0, result.output
    rows = {(r["kind"], r["node"] or r["gw"]): r for r in json.loads(result.output)}
    assert rows[("gateway", "gw-1")]["state"] == "online" and rows[("gateway", "gw-1")]["fw"] == "0.4.0"
    assert rows[("node", "house-1")]["state"] == "safe-mode" and rows[("node", "house-1")]["error"] == "no CT on ch0"
    assert rows[("node", "house-2")]["state"] == "offline"
    assert rows[("node", "house-3")]["state"] == "online" and rows[("node", "house-3")]["messages"] == 1

    table = runner.invoke(app, ["fleet", "status", "--db", db_url], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "gw-1" in table.output and "house-3" in table.output
    assert "no CT on ch0" in table.output and "1 gateways, 3 nodes" in table.output

    # The gateway's last will: every node behind it is unreachable.
    outbox.publish_raw("ghc/gw-1/status", payload({"v": 1, "gw": "gw-1", "online": False}), retain=True)
    wait_for(lambda: controller.service.counters().get("statuses") == 2, 10, "the last will")
    rows = json.loads(runner.invoke(app, ["fleet", "status", "--db", db_url, "--json"]).output)
    assert [r["state"] for r in rows] == ["offline", "unreachable", "unreachable", "unreachable"]


def test_the_controller_rides_out_a_broker_restart(controller, outbox, mosquitto):
    outbox.send(1, batch("gw-1", 1, [node_message("house-1", 1)]))
    assert outbox.wait_all_acked(10)
    mosquitto.stop()
    wait_for(lambda: not controller.service.ready.is_set(), 10, "the controller to notice")
    mosquitto.start()
    wait_for(controller.service.ready.is_set, 15, "the controller to resubscribe")
    outbox.send(2, batch("gw-1", 2, [node_message("house-1", 2)]))
    assert outbox.wait_all_acked(15)
    assert controller.service.counters()["broker_disconnects"] >= 1
