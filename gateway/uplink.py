"""Uplink to the controller: store-and-forward batches over MQTT (docs/PROTOCOL.md, "Uplink").

Every stored node message is also written to the SQLite outbox in the same transaction. When the
controller's broker is reachable, outbox items are cut into batches of at most `batch_items`,
each numbered with the next `gseq` (persisted, never reused) and published on `ghc/<gw>/up`.
A batch is deleted only when the controller's ack on `ghc/<gw>/ack` names its gseq. Cutting and
deleting are transactions on the gateway's writer thread (storage.BatchWriter), like the ingest
batches: the event loop does not wait for their fsyncs. A batch is sent only once its cut is
committed; a delete lost in a crash only sends an acknowledged batch again, which the controller
drops by its gseq.

At most `max_inflight_batches` are unacknowledged at once; one not acked within `retry_s` is
sent again, and after every reconnect all stored batches are resent from the oldest. Delivery is
therefore at-least-once and in gseq order; the controller drops repeats by (gw, gseq).
While the controller is away, messages simply accumulate in the outbox (on disk), and a restart
of the gateway loses nothing: the outbox and the gseq counter are in the database.

The connection is TLS (the controller's broker verified against `ca_file`, its host name checked
unless `tls_insecure`; a client certificate when given) with a user name and password. A failed
connection (wrong CA, wrong password, broker away) is named, counted by reason, logged once and
retried with backoff: the outbox keeps everything meanwhile.
"""
from __future__ import annotations

import asyncio
import json
import logging
from concurrent.futures import Future
from typing import Callable

from gridhive.mqtt_security import ConnectFailure, Options, tls_context

from .metrics import GatewayMetrics
from .mqtt import Incoming, MqttLink
from .storage import BatchWriter, Storage, canonical_json

log = logging.getLogger(__name__)

# Batches cut at once, in windows: the writer thread also stores the ingest batches, so a window
# freed by acks is refilled from batches already cut instead of waiting for its next turn.
CUT_AHEAD = 4

# What a connection failure message tells the operator to check: the gateway.toml keys.
OPTIONS = Options(ca_file="uplink.ca_file", insecure="uplink.tls_insecure = true",
                  credentials="uplink.user / uplink.password", client_cert="uplink.cert_file / uplink.key_file")


def up_topic(gateway_id: str) -> str:
    return f"ghc/{gateway_id}/up"


def ack_topic(gateway_id: str) -> str:
    return f"ghc/{gateway_id}/ack"


def status_topic(gateway_id: str) -> str:
    return f"ghc/{gateway_id}/status"


def status_payload(gateway_id: str, fw: str, online: bool, nodes: list[dict]) -> bytes:
    return canonical_json({"v": 1, "gw": gateway_id, "online": online, "fw": fw, "nodes": nodes}).encode()


def parse_ack(payload: bytes, gateway_id: str) -> list[int]:
    """The gseqs an ack names; ValueError when it is not a valid ack for this gateway."""
    try:
        msg = json.loads(payload)
    except (ValueError, UnicodeError):
        raise ValueError("not JSON") from None
    if not isinstance(msg, dict) or msg.get("v") != 1 or msg.get("gw") != gateway_id:
        raise ValueError("not a v1 ack for this gateway")
    acks = msg.get("acks")
    if not isinstance(acks, list) or not all(isinstance(g, int) and not isinstance(g, bool) for g in acks):
        raise ValueError("acks must be a list of integers")
    return acks


class InflightWindow:
    """Which batches are out and since when: the flow control and resend timer, without I/O."""

    def __init__(self, size: int, retry_ms: int):
        self.size, self.retry_ms = size, retry_ms
        self.sent_ms: dict[int, int] = {}  # gseq -> last (re)send time, in send order
        self.last_sent = 0  # highest gseq sent on this connection

    def room(self) -> int:
        return self.size - len(self.sent_ms)

    def sent(self, gseq: int, now_ms: int) -> None:
        self.sent_ms[gseq] = now_ms
        self.last_sent = max(self.last_sent, gseq)

    def acked(self, gseqs) -> dict[int, int]:
        """Forget acknowledged batches; returns gseq -> send time of those that were in flight."""
        return {g: self.sent_ms.pop(g) for g in gseqs if g in self.sent_ms}

    def due(self, now_ms: int) -> list[int]:
        return sorted(g for g, t in self.sent_ms.items() if now_ms - t >= self.retry_ms)

    def restart(self) -> None:
        """A new connection: nothing is known to be delivered, send again from the oldest batch."""
        self.sent_ms.clear()
        self.last_sent = 0


class Uplink:
    def __init__(self, *, cfg, gateway_id: str, fw: str, storage: Storage, writer: BatchWriter,
                 metrics: GatewayMetrics, nodes: Callable[[], list[dict]], clock_ms: Callable[[], int]):
        self.cfg, self.gateway_id, self.fw = cfg, gateway_id, fw
        self.storage, self.writer = storage, writer  # reads on the loop's connection, writes on the writer's
        self.metrics, self.nodes, self.clock_ms = metrics, nodes, clock_ms
        self.window = InflightWindow(cfg.max_inflight_batches, cfg.retry_s * 1000)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cutting = False  # a form_batches is on the writer thread
        self._failing: set[str] = set()  # outbox writes failing now: logged once, until they work again
        # Checked by the config already; built here, once per process.
        tls = tls_context(cfg.ca_file, cfg.cert_file, cfg.key_file, cfg.tls_insecure) if cfg.tls else None
        self.link = MqttLink(
            name="uplink", host=cfg.host, port=cfg.port, client_id=f"gridhive-gw-{gateway_id}",
            user=cfg.user or None, password=cfg.password or None, keepalive_s=cfg.keepalive_s, tls=tls,
            subscriptions=((ack_topic(gateway_id), 1),), mqtt5=False,  # 3.1.1: any controller broker
            will=(status_topic(gateway_id), status_payload(gateway_id, fw, False, []), 1, True),
            on_messages=self._on_acks, on_connect=self._on_connect, on_disconnect=self._on_disconnect,
            on_connect_failed=self._on_connect_failed, options=OPTIONS)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.link.start(loop)

    def stop(self) -> None:
        """Say goodbye (retained offline status) and disconnect, which cancels the will."""
        if self.link.connected:
            self.link.client.publish(status_topic(self.gateway_id),
                                     status_payload(self.gateway_id, self.fw, False, self.nodes()),
                                     qos=1, retain=True).wait_for_publish(2)
        self.link.stop()

    def publish_status(self) -> None:
        self.link.publish(status_topic(self.gateway_id),
                          status_payload(self.gateway_id, self.fw, True, self.nodes()), qos=1, retain=True)

    def pump(self) -> None:
        """Resend overdue batches, then fill the window: stored batches first, then new ones."""
        if not self.link.connected:
            return
        now = self.clock_ms()
        for gseq in self.window.due(now):
            stored = self.storage.batches(gseq - 1, 1)
            if not stored or stored[0][0] != gseq:
                self.window.acked([gseq])  # already acknowledged and deleted
            elif not self._send(gseq, stored[0][1], now):
                return
        while self.window.room() > 0:
            batches = self.storage.batches(self.window.last_sent, self.window.room())
            if not batches:
                if not self._cutting:  # cut more on the writer thread; _cut() pumps again when committed
                    self._cutting = True
                    self._when_done(self.writer.form_batches(self.gateway_id, self.cfg.batch_items, now,
                                                             self.window.size * CUT_AHEAD), self._cut)
                return
            for gseq, payload in batches:
                if not self._send(gseq, payload, now):
                    return  # the link just went down; the next connect starts over

    def _cut(self, future: Future) -> None:
        self._cutting = False
        if self._worked("cutting batches", future) and future.result():
            self.pump()

    def _deleted(self, future: Future) -> None:
        if self._worked("deleting acknowledged batches", future):
            self.metrics.uplink_acked.inc(future.result())

    def _when_done(self, future: Future, then: Callable[[Future], None]) -> None:
        """Call `then(future)` on the event loop once the writer thread has done it."""
        future.add_done_callback(lambda f: self._loop.call_soon_threadsafe(then, f))

    def _worked(self, what: str, future: Future) -> bool:
        """Whether an outbox write succeeded; a failure is logged when it starts and when it ends.
        Nothing is lost meanwhile: uncut items stay in the outbox (the next pump tries again), an
        undeleted batch is sent again."""
        error = future.exception()
        if error is not None and what not in self._failing:
            self._failing.add(what)
            log.error("uplink: %s failed: %s (retrying; the outbox keeps everything)", what, error)
        elif error is None and what in self._failing:
            self._failing.discard(what)
            log.warning("uplink: %s works again", what)
        return error is None

    def _send(self, gseq: int, payload: bytes, now_ms: int) -> bool:
        if not self.link.publish(up_topic(self.gateway_id), payload, qos=1):
            return False
        self.window.sent(gseq, now_ms)
        self.metrics.uplink_sent.inc()
        return True

    def update_gauges(self) -> None:
        """Queue depths for /metrics (counting rows: called once a second, not per batch)."""
        items, batches = self.storage.outbox_depth()
        self.metrics.outbox_items.set(items)
        self.metrics.outbox_batches.set(batches)
        self.metrics.uplink_inflight.set(len(self.window.sent_ms))

    def _on_acks(self, messages: list[Incoming]) -> None:
        now = self.clock_ms()
        gseqs = []
        for m in messages:
            try:
                gseqs.extend(parse_ack(m.payload, self.gateway_id))
            except ValueError as e:
                self.metrics.uplink_bad_acks.inc()
                log.warning("uplink: ignoring a message on %s: %s", m.topic, e)
        if not gseqs:
            return
        self._when_done(self.writer.delete_batches(gseqs), self._deleted)
        for sent_ms in self.window.acked(gseqs).values():
            self.metrics.uplink_ack_s.observe((now - sent_ms) / 1000)
        self.pump()

    def _on_connect(self) -> None:
        self.metrics.connected.labels("uplink").set(1)
        self.window.restart()
        self.publish_status()
        self.pump()

    def _on_disconnect(self) -> None:
        self.metrics.connected.labels("uplink").set(0)

    def _on_connect_failed(self, failure: ConnectFailure) -> None:
        self.metrics.connect_failures.labels("uplink", failure.reason).inc()
