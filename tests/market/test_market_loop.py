"""The controller's market loop on a fake clock: gate closure, signatures, clearing, settlement."""
import asyncio
import json
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gridhive.market import (Community, Member, MarketConfig, OrderError, clear, money_balances,
                             statements)
from gridhive.market.loop import (MarketLoop, MarketStore, MqttOrderSource, SignedOrder,
                                  order_from_wire, order_to_wire, result_signature_ok,
                                  run_forever, sign_order, sign_result)
from market_fixtures import T0, bid, offer

LEAD_MS = 300_000  # gate closes 5 min before the interval
CONFIG = MarketConfig(4, 30, gate_closure_lead_ms=LEAD_MS)
HOUSES = Community((Member("alice", "f1"), Member("bob", "f1", has_generation=True),
                    Member("carol", "f1", has_generation=True)))
KEYS = {m.member_id: Ed25519PrivateKey.generate() for m in HOUSES.members}


class ListSource:
    def __init__(self):
        self.items = []

    def send(self, order, key=None, ts_ms=None):
        signed = sign_order(order, key or KEYS[order.member_id])
        self.items.append(SignedOrder(order._replace(ts_ms=ts_ms or order.ts_ms),
                                      signed.signature))

    def take(self):
        taken, self.items = self.items, []
        return taken


@pytest.fixture
def world(tmp_path):
    store = MarketStore(tmp_path / "market.sqlite")
    source = ListSource()
    operator = Ed25519PrivateKey.generate()
    meters, published = {}, []
    loop = MarketLoop(CONFIG, HOUSES, store, source, operator,
                      {m: k.public_key() for m, k in KEYS.items()}, meters.get,
                      publish=lambda result, signed: published.append((result, signed)))
    yield loop, store, source, operator, meters, published
    store.close()


def test_an_interval_goes_from_orders_to_a_signed_result_to_settlement(world):
    loop, store, source, operator, meters, published = world
    gate = T0 - LEAD_MS
    source.send(bid("A1", "alice", 1_000, 25, ts_ms=gate - 60_000))
    source.send(offer("B1", "bob", 600, 8, ts_ms=gate - 50_000))
    source.send(offer("C1", "carol", 600, 12, ts_ms=gate - 40_000))
    source.send(offer("C2", "carol", 100, 12, ts_ms=gate - 30_000), key=KEYS["bob"])  # forged
    source.send(offer("A1", "bob", 100, 12, ts_ms=gate - 20_000))                      # dup id
    assert loop.tick(gate - 1) == ["admitted 3 orders"]
    assert [(r[1], r[2]) for r in store.rejections(T0)] == [("C2", "signature"),
                                                           ("A1", "order_id")]
    assert not published

    source.send(offer("B2", "bob", 100, 5, ts_ms=gate + 1))  # after gate closure
    done = loop.tick(gate + 1)
    assert done == ["cleared 1717200000000: 2 trades, 1000 Wh at 18"]  # (25 + 12) / 2, half to even
    assert store.rejections(T0)[-1][1:3] == ("B2", "ts_ms")
    assert loop.rejected == {"signature": 1, "order_id": 1, "ts_ms": 1}
    (result, signed), = published
    assert store.result(T0) == (result, signed)
    assert result_signature_ok(result, signed, operator.public_key())
    tampered = result.trades[0]._replace(price_minor_per_kwh=1)
    assert not result_signature_ok(type(result)(result.interval_start_ms, result.mechanism,
                                                result.clearing_price_minor_per_kwh,
                                                (tampered,) + result.trades[1:], 0),
                                   signed, operator.public_key())

    source.send(offer("C3", "carol", 100, 5, ts_ms=gate - 1))  # the round is closed
    loop.tick(gate + 2)
    assert store.rejections(T0)[-1][1:3] == ("C3", "interval_start_ms")

    # Settlement waits for the end of the interval and for its metering (all of it).
    assert loop.tick(T0 + CONFIG.interval_ms) == []
    meters[T0] = {"alice": -1_100, "bob": 600}
    assert loop.tick(T0 + CONFIG.interval_ms) == [
        "settlement of 1717200000000 waits: interval 1717200000000: metered_net_wh: "
        "missing for carol, who traded"]
    meters[T0] = {"alice": -1_100, "bob": 600, "carol": 350}
    assert loop.tick(T0 + CONFIG.interval_ms) == ["settled 1717200000000: 4 transfers"]
    (settlement,) = store.settlements()
    assert sum(money_balances(settlement.transfers).values()) == 0
    by_member = {s.member_id: s for s in statements(store.settlements(), "day")}
    assert by_member["alice"].bought_wh == 1_000 and by_member["alice"].grid_import_wh == 100
    assert by_member["carol"].grid_import_wh == 50  # sold 400, metered 350


def test_a_restarted_loop_rebuilds_its_books(world, tmp_path):
    loop, store, source, operator, meters, _ = world
    source.send(bid("A1", "alice", 1_000, 25, ts_ms=T0 - LEAD_MS - 10))
    loop.tick(T0 - LEAD_MS - 5)
    again = MarketLoop(CONFIG, HOUSES, store, source, operator,
                       {m: k.public_key() for m, k in KEYS.items()}, meters.get)
    source.send(offer("A1", "bob", 100, 5, ts_ms=T0 - LEAD_MS - 4))  # duplicate across restart
    source.send(offer("B1", "alice", 100, 5, ts_ms=T0 - LEAD_MS - 3))  # other side, same member
    again.tick(T0 - LEAD_MS - 1)
    assert [r[2] for r in store.rejections(T0)] == ["order_id", "side"]
    assert store.meta("config", MarketConfig) == CONFIG
    assert store.meta("community", Community) == HOUSES


def test_wire_format_round_trip_and_bad_payloads():
    signed = sign_order(bid("A1", "alice", 1_000, 25), KEYS["alice"])
    decoded = order_from_wire(order_to_wire(signed), received_ms=T0 - 7)
    assert decoded.order == bid("A1", "alice", 1_000, 25, ts_ms=T0 - 7)
    with pytest.raises(OrderError) as bad:
        order_from_wire(b'{"order": {"order_id": 5}, "signature": ""}', T0)
    assert bad.value.field == "order_id"
    with pytest.raises(OrderError, match="not a signed order"):
        order_from_wire(b"\xff", T0)


@pytest.mark.broker
def test_orders_arrive_from_gateways_over_mqtt(mosquitto):
    import paho.mqtt.client as paho

    source = MqttOrderSource(mosquitto.host, mosquitto.port, clock_ms=lambda: T0 - LEAD_MS - 1)
    gateway = paho.Client(paho.CallbackAPIVersion.VERSION2)
    results = []
    gateway.on_message = lambda client, userdata, message: results.append(message.payload)
    gateway.connect(mosquitto.host, mosquitto.port)
    gateway.subscribe(MqttOrderSource.RESULTS_TOPIC, qos=1)
    gateway.loop_start()
    try:
        time.sleep(0.5)  # let the source subscribe
        signed = sign_order(bid("A1", "alice", 1_000, 25), KEYS["alice"])
        gateway.publish("gridhive/market/orders/alice", order_to_wire(signed), qos=1).wait_for_publish()
        gateway.publish("gridhive/market/orders/bob", b"not json", qos=1).wait_for_publish()
        deadline, got = time.monotonic() + 10, []
        while len(got) < 2 and time.monotonic() < deadline:
            got += source.take()
            time.sleep(0.05)
        operator = Ed25519PrivateKey.generate()
        result = clear([got[0].order, offer("B1", "bob", 1_000, 5, ts_ms=T0 - LEAD_MS - 1)],
                       CONFIG, HOUSES, T0)
        source.publish_result(result, sign_result(result, operator))
        while not results and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        gateway.loop_stop()
        gateway.disconnect()
        source.close()
    assert got[0].order.ts_ms == T0 - LEAD_MS - 1 and got[0].signature == signed.signature
    assert isinstance(got[1], OrderError) and got[1].field == "payload"
    published = json.loads(results[0])
    assert published["result"]["trades"][0]["energy_wh"] == 1_000
    assert published["digest"] == sign_result(result, operator).digest


def test_the_service_ticks_until_stopped(world):
    loop, store, source, _, _, published = world
    source.send(bid("A1", "alice", 1_000, 25, ts_ms=T0 - LEAD_MS - 10))
    source.send(offer("B1", "bob", 1_000, 5, ts_ms=T0 - LEAD_MS - 10))
    clock = iter(range(T0 - LEAD_MS - 5, T0 + 10 * CONFIG.interval_ms, 100_000))

    async def main():
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.3, stop.set)
        await run_forever(loop, lambda: next(clock), stop, tick_s=0.01)

    asyncio.run(main())
    assert len(published) == 1 and store.result_intervals() == [T0]
