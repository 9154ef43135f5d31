"""The controller's market loop: gate closure, collecting orders, clearing, signing, settling.

A service core driven by `tick(now_ms)`: everything it needs comes in through injected
collaborators, so tests run it with a fake clock, and the controller with a timer.
- `source.take()` returns orders received since the last call, each signed by its member
  (until the ledger integration: gateways over MQTT, see `MqttOrderSource`). The source stamps
  `ts_ms` on receipt, so the gate check uses the controller's clock, not the sender's.
- Each tick admits what arrived (a bad order is rejected with the reason, counted, logged once,
  and kept in the store), clears every interval whose gate has closed
  (`interval_start - gate_closure_lead_ms`), signs the result with the operator's Ed25519 key,
  stores and publishes it, and settles every cleared interval that has ended and whose metering
  (`metered_net_wh(interval_start_ms)`) has arrived.
"""
from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Callable, Mapping, NamedTuple, Protocol, Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .clearing import ClearingResult, clear
from .codec import canonical_bytes, digest, from_plain, to_plain
from .model import BookRules, Community, MarketConfig, Order, OrderError, Trade
from .network import NetworkCheck
from .settlement import IntervalSettlement, SettlementError, Transfer, settle_interval

log = logging.getLogger(__name__)
ORDER_DOMAIN = b"gridhive/order/v1\n"    # domain separation: an order signature is never
RESULT_DOMAIN = b"gridhive/result/v1\n"  # valid as a result signature, and vice versa


class SignedOrder(NamedTuple):
    order: Order
    signature: bytes  # member's Ed25519 signature of ORDER_DOMAIN + canonical bytes


def sign_order(order: Order, key: Ed25519PrivateKey) -> SignedOrder:
    return SignedOrder(order, key.sign(ORDER_DOMAIN + canonical_bytes(order._replace(ts_ms=0))))


def order_signature_ok(signed: SignedOrder, key: Ed25519PublicKey) -> bool:
    # ts_ms is stamped by the receiver after signing, so it is not covered.
    try:
        key.verify(signed.signature,
                   ORDER_DOMAIN + canonical_bytes(signed.order._replace(ts_ms=0)))
    except InvalidSignature:
        return False
    return True


class SignedResult(NamedTuple):
    interval_start_ms: int
    digest: str     # SHA-256 of the result's canonical bytes, hex
    signature: str  # operator's Ed25519 signature of RESULT_DOMAIN + digest, hex


def sign_result(result: ClearingResult, key: Ed25519PrivateKey) -> SignedResult:
    result_digest = digest(result)
    return SignedResult(result.interval_start_ms, result_digest,
                        key.sign(RESULT_DOMAIN + result_digest.encode()).hex())


def result_signature_ok(result: ClearingResult, signed: SignedResult,
                        key: Ed25519PublicKey) -> bool:
    if digest(result) != signed.digest:
        return False
    try:
        key.verify(bytes.fromhex(signed.signature), RESULT_DOMAIN + signed.digest.encode())
    except (InvalidSignature, ValueError):
        return False
    return True


class OrderSource(Protocol):
    """Orders received since the last call, or the reason one could not even be decoded."""

    def publish_result(self, result: ClearingResult, signed: SignedResult) -> None:
        """A `publish` callback for MarketLoop: retained, so a gateway that reconnects gets it."""
        self.client.publish(self.RESULTS_TOPIC, result_to_wire(result, signed), qos=1,
                            retain=True)

    def take(self) -> list[SignedOrder | OrderError]: ...


class MarketStore:
    """SQLite store of the loop's state: orders, rejections, signed results, settlements.

    Results and settlements are kept as canonical JSON (the bytes the signature covers)."""

    def __init__(self, path: Path | str):
        self.db = sqlite3.connect(str(path))
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript("""
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS orders (
                interval_start_ms INTEGER NOT NULL, order_id TEXT NOT NULL, json TEXT NOT NULL,
                PRIMARY KEY (interval_start_ms, order_id));
            CREATE TABLE IF NOT EXISTS rejections (
                interval_start_ms INTEGER, order_id TEXT, field TEXT NOT NULL,
                reason TEXT NOT NULL, received_ms INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS results (
                interval_start_ms INTEGER PRIMARY KEY, json TEXT NOT NULL, digest TEXT NOT NULL,
                signature TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS settlements (
                interval_start_ms INTEGER PRIMARY KEY, json TEXT NOT NULL);
        """)

    def close(self) -> None:
        self.db.close()

    def put_meta(self, key: str, value) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                            (key, canonical_bytes(value).decode()))

    def meta(self, key: str, cls):
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else from_plain(cls, json.loads(row[0]))

    def add_order(self, order: Order) -> None:
        with self.db:
            self.db.execute("INSERT INTO orders VALUES (?, ?, ?)",
                            (order.interval_start_ms, order.order_id,
                             canonical_bytes(order).decode()))

    def orders(self, interval_start_ms: int) -> list[Order]:
        rows = self.db.execute("SELECT json FROM orders WHERE interval_start_ms = ? "
                               "ORDER BY rowid", (interval_start_ms,))
        return [from_plain(Order, json.loads(r[0])) for r in rows]

    def open_intervals(self) -> list[int]:
        """Intervals with orders but no result yet, oldest first."""
        rows = self.db.execute("SELECT DISTINCT interval_start_ms FROM orders WHERE "
                               "interval_start_ms NOT IN (SELECT interval_start_ms FROM results) "
                               "ORDER BY 1")
        return [r[0] for r in rows]

    def add_rejection(self, interval_start_ms, order_id, field: str, reason: str,
                      received_ms: int) -> None:
        with self.db:
            self.db.execute("INSERT INTO rejections VALUES (?, ?, ?, ?, ?)",
                            (interval_start_ms, order_id, field, reason, received_ms))

    def rejections(self, interval_start_ms: int | None = None) -> list[tuple]:
        sql = "SELECT interval_start_ms, order_id, field, reason, received_ms FROM rejections"
        if interval_start_ms is None:
            return self.db.execute(sql + " ORDER BY rowid").fetchall()
        return self.db.execute(sql + " WHERE interval_start_ms = ? ORDER BY rowid",
                               (interval_start_ms,)).fetchall()

    def add_result(self, result: ClearingResult, signed: SignedResult) -> None:
        with self.db:
            self.db.execute("INSERT INTO results VALUES (?, ?, ?, ?)",
                            (result.interval_start_ms, canonical_bytes(result).decode(),
                             signed.digest, signed.signature))

    def has_result(self, interval_start_ms: int) -> bool:
        return self.db.execute("SELECT 1 FROM results WHERE interval_start_ms = ?",
                               (interval_start_ms,)).fetchone() is not None

    def result(self, interval_start_ms: int) -> tuple[ClearingResult, SignedResult] | None:
        row = self.db.execute("SELECT json, digest, signature FROM results "
                              "WHERE interval_start_ms = ?", (interval_start_ms,)).fetchone()
        if row is None:
            return None
        return (from_plain(ClearingResult, json.loads(row[0])),
                SignedResult(interval_start_ms, row[1], row[2]))

    def result_intervals(self) -> list[int]:
        return [r[0] for r in self.db.execute("SELECT interval_start_ms FROM results ORDER BY 1")]

    def unsettled_results(self) -> list[int]:
        rows = self.db.execute("SELECT interval_start_ms FROM results WHERE interval_start_ms "
                               "NOT IN (SELECT interval_start_ms FROM settlements) ORDER BY 1")
        return [r[0] for r in rows]

    def add_settlement(self, settlement: IntervalSettlement) -> None:
        with self.db:
            self.db.execute("INSERT INTO settlements VALUES (?, ?)",
                            (settlement.interval_start_ms,
                             canonical_bytes(settlement).decode()))

    def has_settlement(self, interval_start_ms: int) -> bool:
        return self.db.execute("SELECT 1 FROM settlements WHERE interval_start_ms = ?",
                               (interval_start_ms,)).fetchone() is not None

    def settlements(self) -> list[IntervalSettlement]:
        rows = self.db.execute("SELECT json FROM settlements ORDER BY interval_start_ms")
        return [_settlement_from_plain(json.loads(r[0])) for r in rows]


def _settlement_from_plain(data: dict) -> IntervalSettlement:
    return IntervalSettlement(
        data["interval_start_ms"], data["retail_minor_per_kwh"], data["feed_in_minor_per_kwh"],
        tuple((m, wh) for m, wh in data["metered_net_wh"]),
        tuple(from_plain(Trade, t) for t in data["trades"]),
        tuple(from_plain(Transfer, t) for t in data["transfers"]))


class MarketLoop:
    def __init__(self, config: MarketConfig, community: Community, store: MarketStore,
                 source: OrderSource, operator_key: Ed25519PrivateKey,
                 member_keys: Mapping[str, Ed25519PublicKey],
                 metered_net_wh: Callable[[int], Mapping[str, int] | None],
                 publish: Callable[[ClearingResult, SignedResult], None] = lambda r, s: None,
                 network_checks: Sequence[NetworkCheck] = ()):
        self.config = config
        self.community = community
        self.store = store
        self.source = source
        self.operator_key = operator_key
        self.member_keys = member_keys
        self.metered_net_wh = metered_net_wh
        self.publish = publish
        self.network_checks = network_checks
        self.rejected: Counter[str] = Counter()  # metric: rejections by field
        self._books: dict[int, BookRules] = {}
        store.put_meta("config", config)
        store.put_meta("community", community)
        # After a restart, the books' rules are rebuilt from the stored orders.
        for interval_start_ms in store.open_intervals():
            rules = self._book(interval_start_ms)
            for order in store.orders(interval_start_ms):
                rules.admit(order)

    def gate_ms(self, interval_start_ms: int) -> int:
        return interval_start_ms - self.config.gate_closure_lead_ms

    def tick(self, now_ms: int) -> list[str]:
        """Do what is due at `now_ms`; return a line per thing done (for the service's log)."""
        admitted = sum(self._admit(item, now_ms) for item in self.source.take())
        done = [f"admitted {admitted} orders"] if admitted else []
        for interval_start_ms in self.store.open_intervals():
            if self.gate_ms(interval_start_ms) <= now_ms:
                done.append(self._clear(interval_start_ms))
        for interval_start_ms in self.store.unsettled_results():
            if interval_start_ms + self.config.interval_ms <= now_ms:
                metered = self.metered_net_wh(interval_start_ms)
                if metered is None:
                    continue
                try:
                    done.append(self._settle(interval_start_ms, metered))
                except SettlementError as err:  # e.g. a meter still missing: retried next tick
                    self.rejected[f"settlement.{err.field}"] += 1
                    done.append(f"settlement of {interval_start_ms} waits: {err}")
        return done

    def _book(self, interval_start_ms: int) -> BookRules:
        if interval_start_ms not in self._books:
            self._books[interval_start_ms] = BookRules(self.config, self.community,
                                                       interval_start_ms)
        return self._books[interval_start_ms]

    def _admit(self, signed: SignedOrder | OrderError, now_ms: int) -> bool:
        order = getattr(signed, "order", None)
        try:
            if isinstance(signed, OrderError):
                raise signed
            if type(order) is not Order:
                raise OrderError("order", "must be an Order")
            key = self.member_keys.get(order.member_id)
            if key is None:
                raise OrderError("member_id", f"no key for member {order.member_id!r}",
                                 f"order {order.order_id}")
            if not order_signature_ok(signed, key):
                raise OrderError("signature", "does not verify with the member's key",
                                 f"order {order.order_id}")
            if (type(order.interval_start_ms) is not int
                    or order.interval_start_ms % self.config.interval_ms):
                raise OrderError("interval_start_ms", "is not aligned to the market interval",
                                 f"order {order.order_id}")
            if self.store.has_result(order.interval_start_ms):
                raise OrderError("interval_start_ms", "the round is closed (BIDS_CLOSED)",
                                 f"order {order.order_id}")
            self._book(order.interval_start_ms).admit(order)
        except OrderError as err:
            self.rejected[err.field] += 1
            log.info("rejected %s", err)
            self.store.add_rejection(getattr(order, "interval_start_ms", None),
                                     str(getattr(order, "order_id", "")), err.field, str(err),
                                     now_ms)
            return False
        self.store.add_order(order)
        return True

    def _clear(self, interval_start_ms: int) -> str:
        result = clear(self.store.orders(interval_start_ms), self.config, self.community,
                       interval_start_ms, network_checks=self.network_checks)
        signed = sign_result(result, self.operator_key)
        self.store.add_result(result, signed)
        self._books.pop(interval_start_ms, None)
        self.publish(result, signed)
        return (f"cleared {interval_start_ms}: {len(result.trades)} trades, "
                f"{result.energy_wh} Wh at {result.clearing_price_minor_per_kwh}")

    def _settle(self, interval_start_ms: int, metered: Mapping[str, int]) -> str:
        result, _ = self.store.result(interval_start_ms)
        settlement = settle_interval(result, metered, self.config, self.community)
        self.store.add_settlement(settlement)
        return f"settled {interval_start_ms}: {len(settlement.transfers)} transfers"


def order_to_wire(signed: SignedOrder) -> bytes:
    """The JSON a gateway publishes: the order (without ts_ms) and its signature, hex."""
    plain = to_plain(signed.order)
    del plain["ts_ms"]
    return json.dumps({"order": plain, "signature": signed.signature.hex()},
                      sort_keys=True).encode()


def order_from_wire(payload: bytes, received_ms: int) -> SignedOrder:
    """Decode a published order, stamping its time of entry; OrderError names a bad field."""
    try:
        data = json.loads(payload)
        plain, signature = dict(data["order"]), bytes.fromhex(data["signature"])
    except (ValueError, TypeError, KeyError) as err:
        raise OrderError("payload", f"not a signed order: {err}") from None
    plain["ts_ms"] = received_ms
    try:
        return SignedOrder(from_plain(Order, plain), signature)
    except Exception as err:  # from_plain names the field in a MarketError
        raise OrderError(getattr(err, "field", "order"), str(err)) from None


def result_to_wire(result: ClearingResult, signed: SignedResult) -> bytes:
    """What the controller publishes: the result's canonical JSON, its digest and signature."""
    return json.dumps({"result": json.loads(canonical_bytes(result)), "digest": signed.digest,
                       "signature": signed.signature}, sort_keys=True).encode()


async def run_forever(market: MarketLoop, clock_ms: Callable[[], int],
                      stop: asyncio.Event, tick_s: float = 1.0) -> None:
    """The thin service: tick every `tick_s` until `stop` is set, logging what was done."""
    while not stop.is_set():
        for line in market.tick(clock_ms()):
            log.info("market: %s", line)
        try:
            await asyncio.wait_for(stop.wait(), tick_s)
        except TimeoutError:
            pass


class MqttOrderSource:
    """Orders from gateways over MQTT (topic `gridhive/market/orders/<member>`), until the
    ledger carries them. An undecodable payload is passed on as the OrderError saying why."""

    TOPIC = "gridhive/market/orders/+"
    RESULTS_TOPIC = "gridhive/market/results"

    def __init__(self, host: str, port: int, clock_ms: Callable[[], int],
                 client_id: str = "gridhive-market"):
        import paho.mqtt.client as paho

        self._clock_ms = clock_ms
        self._inbox: list[SignedOrder | OrderError] = []
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(self.TOPIC, qos=1)
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:
        try:
            self._inbox.append(order_from_wire(message.payload, self._clock_ms()))
        except OrderError as err:
            self._inbox.append(err)

    def publish_result(self, result: ClearingResult, signed: SignedResult) -> None:
        """A `publish` callback for MarketLoop: retained, so a gateway that reconnects gets it."""
        self.client.publish(self.RESULTS_TOPIC, result_to_wire(result, signed), qos=1,
                            retain=True)

    def take(self) -> list[SignedOrder | OrderError]:
        taken, self._inbox = self._inbox, []  # list swap: atomic under the GIL
        return taken

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

