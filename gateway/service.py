"""The gateway process: one asyncio loop around the pure cores.

  local broker --(BrokerLink: every packet of a socket read)--> on_messages --> Ingest.receive --> pending batch
  every ack_batch_ms (or commit_max_messages): the batch goes to the writer thread (storage.BatchWriter,
      one transaction on a connection of its own) while the loop receives the next; once stored
      --> PUBACK to the broker --> signed acks to the nodes --> uplink pump, replies, HA states
  a 1 s ticker: uplink resends and status, HA states, LED, metrics, sd_notify watchdog, pruning
  with a [meter]: the Modbus poller task (gateway.meter.service) reads it every period_s and
  cross-checks each interval against the household's circuits
  uvicorn serves the HTTP API and /metrics in the same loop.

A message is acknowledged (to the broker and to the node) only after the transaction holding it
has committed, so whatever a crash loses is still in the broker's session or the node's flash.
"""
from __future__ import annotations

import asyncio
import contextlib
from concurrent import futures
import errno
import gc
from collections import Counter
import logging
import signal
import socket
import sqlite3
import time
from importlib import metadata

import uvicorn

from ghnode import wire
from gridhive.mqtt_security import ConnectFailure, Options

from .commands import CommandError, CommandResult, RelayCommands
from .config import ConfigError, GatewayConfig
from .homeassistant import OFFLINE, ON, OFF, ONLINE, HomeAssistant
from .http import build_app
from .ingest import ACCEPTED, DUPLICATE, REJECTED, STATUS, Ingest, Limits, RejectLog, Verdict, ack_payloads
from .metrics import GatewayMetrics
from .brokerlink import BrokerLink, Received
from .panel import StatusPanel, panel_state
from .sdnotify import SdNotifier
from .storage import BatchWriter, Storage, canonical_json, node_rows
from .uplink import Uplink

log = logging.getLogger("gridhive.gateway")

HA_STATE_MIN_INTERVAL_MS = 1000  # Home Assistant needs no more than 1 Hz per node
GC_THRESHOLD = 20_000  # allocations between young-generation collections (CPython's default: 700)


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def gateway_version() -> str:
    try:
        return metadata.version("gridhive")
    except metadata.PackageNotFoundError:
        return "0+unknown"


class Gateway:
    def __init__(self, cfg: GatewayConfig, clock_ms=wall_ms):
        self.cfg, self.clock_ms = cfg, clock_ms
        self.gateway_id = cfg.gateway_id
        self.fw = gateway_version()
        self.metrics = GatewayMetrics()
        # What can fail on this machine with a valid config fails here, before anything has
        # started, as a ConfigError naming the key: the HTTP port first, then the database.
        self.http_port: int | None = None
        self._http_sock = self._bind_http()
        try:
            self.storage = Storage(cfg.db_path, cfg.storage.synchronous, outbox=cfg.uplink.enabled)
        except (OSError, sqlite3.Error) as e:
            if self._http_sock:
                self._http_sock.close()
            key = "storage.path" if cfg.storage.path else "gateway.data_dir"
            reason = getattr(e, "strerror", None) or e
            raise ConfigError(key, f"cannot open the database {cfg.db_path} ({reason}): point {key} at a "
                              "folder this user may write") from None
        # Ingest and uplink batches are written by a thread of their own: the loop goes on
        # receiving and verifying meanwhile.
        self.writer = BatchWriter(self.storage)
        self.ingest = Ingest(cfg.registry, Limits.of(cfg), self.storage.is_known, self.storage.load_tracks())
        self.reject_log = RejectLog(cfg.ingest.reject_log_interval_s * 1000)
        self.ha = HomeAssistant(self.gateway_id, self.fw, cfg.homeassistant.discovery_prefix,
                                cfg.homeassistant.state_prefix) if cfg.homeassistant.enabled else None
        self.commands = RelayCommands(registry=cfg.registry, tracks=self.ingest.tracks, storage=self.storage,
                                      publish=self._publish_cmd, metrics=self.metrics,
                                      timeout_s=cfg.commands.timeout_s)
        self.uplink = Uplink(cfg=cfg.uplink, gateway_id=self.gateway_id, fw=self.fw, storage=self.storage,
                             writer=self.writer,
                             metrics=self.metrics, nodes=self.node_status,
                             clock_ms=clock_ms) if cfg.uplink.enabled else None
        b = cfg.broker
        mqtt5 = b.mqtt_version == "5"
        # MQTT 5: all of gh/# (no-local keeps our own acks and commands out), so stray topics are
        # counted too. MQTT 3.1.1 has no no-local: only the node-originated kinds.
        subs = [(wire.TOPIC_ROOT + "/#", 1)] if mqtt5 else [(wire.topic("+", k), 1) for k in wire.UP_KINDS]
        will = None
        if self.ha:
            subs += [(self.ha.birth_topic, 1), (self.ha.command_filter, 1)]
            will = (self.ha.gateway_availability_topic, OFFLINE.encode(), 1, True)
        self.local = BrokerLink(
            name="broker", host=b.host, port=b.port, client_id=b.client_id or f"gridhive-gateway-{self.gateway_id}",
            user=b.user, password=b.password or None, keepalive_s=b.keepalive_s, subscriptions=tuple(subs),
            mqtt5=mqtt5, will=will, on_messages=self._on_messages,
            on_connect=self._on_broker_connect, on_disconnect=self._on_broker_disconnect,
            on_connect_failed=self._on_broker_connect_failed,
            options=Options(credentials="broker.user / broker.password"))
        self.meter = None
        if cfg.meter:
            from .meter.service import MeterService  # pymodbus only on gateways with a meter
            self.meter = MeterService(cfg.meter, registry=cfg.registry, storage=self.storage,
                                      metrics_registry=self.metrics.registry, interval_ms=cfg.storage.interval_s * 1000,
                                      tracks=self.ingest.tracks, flush=self.flush, clock_ms=clock_ms)
        self.sd = SdNotifier()
        self.panel: StatusPanel | None = None
        self._http_task: asyncio.Task | None = None
        self._pending: list[tuple[Verdict, int, Received]] = []
        # (batch, future, started) while an ingest batch is being written.
        self._writing: tuple[list[tuple[Verdict, int, Received]], futures.Future, float] | None = None
        self._acks_only: list[Received] = []  # MQTT messages that need no storage
        self._flush_handle: asyncio.TimerHandle | None = None
        self._announced: dict[str, tuple[frozenset, frozenset]] = {}
        self._ha_state: dict[str, dict] = {}
        self._ha_dirty: set[str] = set()
        self._ha_sent_ms: dict[str, int] = {}
        self._status_changed = False
        self._stop: asyncio.Event | None = None
        self._fatal: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- public Python API ---------------------------------------------------------------------

    async def switch_relay(self, node: str, relay: int, action: str, timeout_s: float | None = None) -> CommandResult:
        """Switch a node's relay; returns the node's reply or raises a commands.CommandError."""
        return await self.commands.switch(node, relay, action, timeout_s)

    def node_status(self) -> list[dict]:
        out = []
        for entry in sorted(self.cfg.registry, key=lambda e: e.node_id):
            t = self.ingest.tracks.get(entry.node_id)
            out.append({"node": entry.node_id, "household": entry.household,
                        "last_seen_ms": t.last_seen_ms if t else None, "fw": t.fw if t else None,
                        "online": bool(t and t.online)})
        return out

    def stats(self) -> dict:
        items, batches = self.storage.outbox_depth()
        return {
            "gateway": self.gateway_id, "fw": self.fw,
            "accepted": dict(self.ingest.accepted), "accepted_total": sum(self.ingest.accepted.values()),
            "rejected": dict(self.ingest.rejected), "rejected_total": sum(self.ingest.rejected.values()),
            "duplicates": self.ingest.duplicates, "counter_resets": self.ingest.counter_resets,
            "stored_messages": self.storage.count("message"), "quarantined": self.storage.count("quarantine"),
            "pending": self._pending_count(), "outbox_items": items, "outbox_batches": batches,
            "broker_connected": self.local.connected, "broker_subscribed": self.local.subscribed,
            "uplink_connected": bool(self.uplink and self.uplink.link.connected),
        }

    def _pending_count(self) -> int:
        """Messages received and not yet stored: pending, and the batch being written."""
        return len(self._pending) + (len(self._writing[0]) if self._writing else 0)

    def energy(self, start_ms: int, end_ms: int) -> dict:
        households = self.storage.household_energy(self.cfg.registry, start_ms, end_ms)
        return {
            "interval_s": self.cfg.storage.interval_s,
            "households": {h: [{"start_ms": s, "import_wh": i, "export_wh": e} for s, (i, e) in sorted(rows.items())]
                           for h, rows in sorted(households.items())},
            "circuits": [{**row, "circuit": self._circuit(row["node"], row["ch"])}
                         for row in self.storage.interval_energy(start_ms, end_ms)],
        }

    def _circuit(self, node: str, ch: int) -> str:
        entry = self.cfg.registry.get(node)
        return entry.channel_name(ch) if entry else f"ch{ch}"

    # --- running -------------------------------------------------------------------------------

    async def run(self, handle_signals: bool = True) -> int:
        """Run until SIGTERM/SIGINT (or stop()); returns the process exit code."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self._stop.set)
        if self.cfg.gpio.enabled:
            factory = None
            if self.cfg.gpio.pin_factory == "mock":
                from gpiozero.pins.mock import MockFactory
                factory = MockFactory()
            self.panel = StatusPanel(self.cfg.gpio.led_pin, self.cfg.gpio.button_pin, factory,
                                     on_press=self.announce, loop=self._loop)
        self.local.start(self._loop)
        if self.uplink:
            self.uplink.start(self._loop)
        server = await self._start_http()
        ticker = asyncio.create_task(self._ticker())
        meter_task = asyncio.create_task(self.meter.run(self._stop)) if self.meter else None
        log.info("gateway %s %s: %d nodes, database %s, HTTP %s", self.gateway_id, self.fw,
                 len(self.cfg.registry), self.cfg.db_path, self.http_port or "off")
        self.sd.ready(f"serving {len(self.cfg.registry)} nodes")
        await self._stop.wait()
        self.sd.stopping()
        ticker.cancel()
        if meter_task:
            meter_task.cancel()  # a read in progress is abandoned: the slot stays unread
            await asyncio.gather(meter_task, return_exceptions=True)
            self.meter.close()
        if server:
            server.should_exit = True
            await self._http_task
        await self._shutdown()
        if self._fatal:
            log.critical("stopped on a storage error: %s", self._fatal)
            return 1
        return 0

    def stop(self) -> None:
        """Ask run() to finish; safe to call from any thread."""
        if self._stop and self._loop:
            self._loop.call_soon_threadsafe(self._stop.set)

    async def _shutdown(self) -> None:
        self.flush()
        if self.uplink:
            self.uplink.stop()  # before the writer closes: a stopped uplink cuts and deletes nothing more
        self.writer.close()
        if self.ha:
            self.local.publish(self.ha.gateway_availability_topic, OFFLINE, retain=True)
        await self.local.close(2)  # after the broker has acknowledged what we sent (acks, statuses)
        if self.panel:
            self.panel.close()
        self.storage.close()
        log.info("gateway %s stopped", self.gateway_id)

    def _bind_http(self) -> socket.socket | None:
        """The HTTP API's listening socket (served from run()); sets http_port."""
        if not self.cfg.http.enabled:
            return None
        host, port = self.cfg.http.host, self.cfg.http.port
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen()  # now, not when uvicorn starts: until then Linux lets another bind it too
        except OSError as e:
            sock.close()
            if e.errno == errno.EADDRINUSE:
                raise ConfigError("http.port", f"{host}:{port} is in use (another gateway?); "
                                  "choose another http.port") from None
            raise ConfigError("http.host", f"cannot listen on {host}:{port} ({e.strerror}): "
                              "check http.host and http.port") from None
        self.http_port = sock.getsockname()[1]
        return sock

    async def _start_http(self):
        if self._http_sock is None:
            return None
        server = _QuietServer(uvicorn.Config(build_app(self), log_level="warning", lifespan="off"))
        self._http_task = asyncio.create_task(server.serve(sockets=[self._http_sock]))
        return server

    async def _ticker(self) -> None:
        last_prune = last_status = 0
        while True:
            now = self.clock_ms()
            if now - last_prune >= self.cfg.storage.prune_interval_s * 1000:
                last_prune = now
                self._prune(now)
            if self.uplink:
                self.uplink.pump()
                self.uplink.update_gauges()
                if self._status_changed or now - last_status >= self.cfg.uplink.status_interval_s * 1000:
                    last_status, self._status_changed = now, False
                    self.uplink.publish_status()
            self._publish_ha_states(now)
            self.metrics.pending.set(self._pending_count())
            self.metrics.nodes_online.set(sum(1 for t in self.ingest.tracks.values() if t.online))
            if self.panel:
                self.panel.show(panel_state(self.local.connected, bool(self.uplink and self.uplink.link.connected),
                                            self.uplink is not None))
            if self.sd.watchdog_interval_s:
                self.sd.watchdog()
            await asyncio.sleep(min(1.0, self.sd.watchdog_interval_s or 1.0))

    def _prune(self, now: int) -> None:
        s = self.cfg.storage
        deleted = self.storage.prune(now, s.raw_retention_days, s.minute_retention_days,
                                     s.interval_retention_days, self.ingest.tracks)
        if self.meter:
            deleted.update(self.storage.prune_meter(now, s.raw_retention_days, s.interval_retention_days))
        for table, n in deleted.items():
            self.metrics.pruned.labels(table).inc(n)

    # --- ingest ---------------------------------------------------------------------------------

    def _on_messages(self, batch: list[Received]) -> None:
        now = self.clock_ms()
        for m in batch:
            if m.topic.startswith(wire.TOPIC_ROOT + "/"):
                verdict = self.ingest.receive(m.topic, m.payload, now)
                if verdict.outcome == REJECTED:
                    self._rejected(verdict, now)
                self._pending.append((verdict, now, m))
                if len(self._pending) == self.cfg.ingest.commit_max_messages:
                    self._cut()  # a socket read can hold hundreds: cut at the limit, not after them
                continue
            self._acks_only.append(m)
            if self.ha and m.topic == self.ha.birth_topic:
                if m.payload == ONLINE.encode():
                    self.announce()
            elif self.ha:
                command = self.ha.parse_command(m.topic, m.payload)
                if command:
                    self._loop.create_task(self._ha_switch(*command))
        if (self._pending or self._acks_only) and self._flush_handle is None:
            self._flush_handle = self._loop.call_later(self.cfg.ingest.ack_batch_ms / 1000, self._cut)

    def _rejected(self, v: Verdict, now: int) -> None:
        self.metrics.rejected.labels(v.reason).inc()
        suppressed = self.reject_log.should_log(v.node, v.reason, now)
        if suppressed is not None:
            more = f" (and {suppressed} more since the last report)" if suppressed else ""
            # The node name may come from an unauthenticated topic: keep the line short.
            log.warning("rejected %s from %s: %s%s", v.reason, (v.node or "?")[:40], v.detail[:200], more)

    def flush(self) -> None:
        """Commit everything received so far and act on it, waiting for the writes (the meter's
        interval cross-check and shutdown need the readings stored)."""
        while not self._fatal and (self._writing or self._pending or self._acks_only):
            if self._writing:
                futures.wait([self._writing[1]])
                self._written(self._writing[1])
            else:
                self._cut()

    def _cut(self) -> None:
        """Hand the pending batch to the writer thread. While one is being written the next waits
        (and reading from the broker pauses at commit_max_messages); it is cut when that one is stored."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        acks_only, self._acks_only = self._acks_only, []
        for m in acks_only:
            self.local.ack(m)
        if self._writing or not self._pending:
            if len(self._pending) >= self.cfg.ingest.commit_max_messages:
                self.local.pause_reading()
            return
        batch, self._pending = self._pending, []
        self.ingest.flushing()
        touched = {v.node for v, _, _ in batch if v.outcome in (ACCEPTED, STATUS)}
        future = self.writer.submit([(v, rx) for v, rx, _ in batch if v.outcome == ACCEPTED or v.quarantine],
                                    node_rows({node: self.ingest.tracks[node] for node in touched}))
        self._writing = (batch, future, time.perf_counter())
        future.add_done_callback(lambda f: self._loop.call_soon_threadsafe(self._written, f))

    def _written(self, future: futures.Future) -> None:
        """A batch is stored (or failed): acknowledge it and act on it; cut the next one if due."""
        if self._writing is None or self._writing[1] is not future:
            return  # flush() has handled it already
        batch, _, started = self._writing
        self._writing = None
        try:
            future.result()
        except sqlite3.Error as e:
            # Nothing of this batch is acknowledged, so nothing is lost: stop and let systemd
            # restart us; the broker and the nodes deliver the batch again.
            self._fatal = e
            self.stop()
            return
        self.ingest.stored()
        self.metrics.commit_s.observe(time.perf_counter() - started)
        self._committed(batch)
        self.local.resume_reading()
        # Due already: full, or its timer went off while this batch was being written.
        if len(self._pending) >= self.cfg.ingest.commit_max_messages or (self._pending and self._flush_handle is None):
            self._cut()

    def _committed(self, batch: list[tuple[Verdict, int, Received]]) -> None:
        now = self.clock_ms()
        node_acks: dict[str, list[int]] = {}
        # Home Assistant shows a node's latest reading: its last tele of the batch is enough.
        latest = {v.node: i for i, (v, _, _) in enumerate(batch) if v.outcome == ACCEPTED and v.msg["t"] == "tele"}
        for i, (verdict, rx_ms, m) in enumerate(batch):
            self.local.ack(m)
            if verdict.ack:
                node_acks.setdefault(verdict.node, []).append(verdict.msg["seq"])
            self._after_commit(verdict, latest.get(verdict.node) == i)
        for node, seqs in node_acks.items():
            self._send_acks(node, seqs)
        # Metrics per batch, not per message: at thousands a second the label lookups add up.
        kinds = Counter(v.msg["t"] for v, _, _ in batch if v.outcome == ACCEPTED)
        for kind, n in kinds.items():
            self.metrics.accepted.labels(kind).inc(n)
        self.metrics.duplicates.inc(sum(1 for v, _, _ in batch if v.outcome == DUPLICATE))
        self.metrics.ingest_latency_s.observe((now - batch[0][1]) / 1000)  # the batch's oldest message
        if self.uplink:
            self.uplink.pump()
        self._publish_ha_states(now)

    def _after_commit(self, v: Verdict, latest_tele: bool) -> None:
        if v.outcome == STATUS:
            if self.ha:
                self.local.publish(self.ha.availability_topic(v.node), ONLINE if v.msg["online"] else OFFLINE,
                                   retain=True)
            self._status_changed = True  # sent by the ticker: one status for a burst of changes
        elif v.outcome == ACCEPTED:
            kind = v.msg["t"]
            if v.counter_resets:
                self.metrics.counter_resets.inc(v.counter_resets)
            if kind == "reply":
                self.commands.on_reply(v.node, v.msg)
                self._ha_relay_state(v.node, v.msg["relay"], v.msg["state"] == "on")
            elif kind == "tele" and self.ha and latest_tele:
                self._ha_state.setdefault(v.node, {}).update(self.ha.state(v.msg))
                self._ha_dirty.add(v.node)
                self._maybe_announce(v.node, v.msg)

    def _send_acks(self, node: str, seqs: list[int]) -> None:
        track, entry = self.ingest.tracks.get(node), self.cfg.registry.get(node)
        if track is None or track.boot is None or entry is None:
            return
        for payload in ack_payloads(node, track.boot, seqs, entry.secret):
            if self.local.publish(wire.topic(node, "ack"), payload):
                self.metrics.acks_sent.inc()

    def _publish_cmd(self, node: str, payload: bytes) -> bool:
        return self.local.publish(wire.topic(node, "cmd"), payload)

    # --- Home Assistant --------------------------------------------------------------------------

    def announce(self) -> None:
        """(Re)publish discovery for every node, then availability and states; and our status."""
        if self.ha:
            self.local.publish(self.ha.gateway_availability_topic, ONLINE, retain=True)
            nodes = {e.node_id for e in self.cfg.registry} | set(self._ha_state)
            for node in sorted(nodes):
                self._announce_node(node)
                track = self.ingest.tracks.get(node)
                if track and track.online is not None:
                    self.local.publish(self.ha.availability_topic(node), ONLINE if track.online else OFFLINE,
                                       retain=True)
                self._ha_dirty.add(node)
            self._ha_sent_ms.clear()
            self._publish_ha_states(self.clock_ms())
        if self.uplink:
            self.uplink.publish_status()

    def _announce_node(self, node: str) -> None:
        entry = self.cfg.registry.get(node)
        state = self._ha_state.get(node, {})
        channels = set(entry.channels if entry else ()) | {int(k[2:k.index("_")]) for k in state if k.startswith("ch")}
        relays = set(entry.relays if entry else ()) | {int(k[5:]) for k in state if k.startswith("relay")}
        track = self.ingest.tracks.get(node)
        for topic, payload in self.ha.discovery(node, entry, channels, relays, track.fw if track else None):
            self.local.publish(topic, canonical_json(payload), retain=True)
        self._announced[node] = (frozenset(channels), frozenset(relays))

    def _maybe_announce(self, node: str, tele: dict) -> None:
        channels = frozenset(ch["n"] for ch in tele["ch"])
        relays = frozenset(r["n"] for r in tele["relays"])
        known = self._announced.get(node)
        if known is None or not (channels <= known[0] and relays <= known[1]):
            self._announce_node(node)

    def _ha_relay_state(self, node: str, relay: int, on: bool) -> None:
        if self.ha:
            self._ha_state.setdefault(node, {})[f"relay{relay}"] = ON if on else OFF
            self._ha_dirty.add(node)

    def _publish_ha_states(self, now: int) -> None:
        if not self.ha or not self.local.connected:
            return
        for node in list(self._ha_dirty):
            if now - self._ha_sent_ms.get(node, 0) >= HA_STATE_MIN_INTERVAL_MS:
                self.local.publish(self.ha.state_topic(node), canonical_json(self._ha_state.get(node, {})),
                                   retain=True)
                self._ha_sent_ms[node] = now
                self._ha_dirty.discard(node)

    async def _ha_switch(self, node: str, relay: int, action: str) -> None:
        try:
            await self.switch_relay(node, relay, action)
        except CommandError as e:
            log.warning("Home Assistant switch %s relay %d %s failed: %s", node, relay, action, e)
            self._ha_dirty.add(node)  # re-publish the real state so HA's toggle falls back

    # --- broker link -----------------------------------------------------------------------------

    def _on_broker_connect(self) -> None:
        self.metrics.connected.labels("broker").set(1)
        self.announce()

    def _on_broker_disconnect(self) -> None:
        self.metrics.connected.labels("broker").set(0)

    def _on_broker_connect_failed(self, failure: ConnectFailure) -> None:
        self.metrics.connect_failures.labels("broker", failure.reason).inc()


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: the gateway owns SIGTERM/SIGINT."""

    def capture_signals(self):
        return contextlib.nullcontext()


def tune_gc() -> None:
    """Every message makes a few dozen short-lived dicts and lists. With the default thresholds the
    cyclic GC ran every 700 of them and rescanned the long-lived heap (modules, uvicorn, the
    registry) again and again: ~12 % of the CPU at thousands of messages a second, measured.
    Long-lived objects made so far are frozen out of its scans; young ones are scanned less often."""
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 10, 10)


def run_gateway(cfg: GatewayConfig) -> int:
    gateway = Gateway(cfg)
    tune_gc()
    return asyncio.run(gateway.run())
