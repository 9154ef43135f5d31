"""The node application: measure, protect, report, never lose a reading. Runs on MicroPython and CPython.

The app owns no hardware: a board object gives it everything (hal_esp32.Board on an ESP32,
hal_sim.SimBoard on a host). What a board provides:
    root                       flash directory holding config.json, state.json and buf/
    clock                      ticks_us / ticks_diff / ticks_add for the sampling loop
    ticks_ms()                 a millisecond tick (may wrap; the app accumulates differences)
    unix_ms()                  Unix time in ms once the clock is synced (NTP), else None
    sync_time(host)            try to set the clock; True when it is set
    adc(pin)                   an input with read_uv()
    relay_pin(pin, active_low) an output with write(now_ms, on)
    wifi(ssid, password)       isconnected() / connect() / rssi()
    button(pin)                a local push button with pressed(): True once per press
    firmware_ok()              this firmware reached its gateway: keep it (appdir.confirm on a board)
    tls()                      an ssl context for MQTT over TLS
    wdt(timeout_ms)            a watchdog with feed()
    reset_cause(), heap_free(), reset(), sleep_ms(ms), log(text)

Every message that needs the gateway's acknowledgement goes into the flash ring buffer first and
is published from there, oldest first; it is deleted only when a verified ack names its seq.
"""
import json
from binascii import unhexlify

from . import config as node_config
from . import wire
from .link import Link
from .measure import CTCal, EnergyCounter, Meter, VTCal, IMPORT, EXPORT
from .relay import Relay, RelayBank
from .ringbuf import RingBuffer
from .state import NodeState, SeqAllocator

LOOP_MS = 1000            # one measurement window per second; energy integrates between them
RESEND_AFTER_MS = 30000   # re-publish un-acked messages (from the oldest) when no ack came this long
SAFE_MODE_POLL_MS = 5000  # how often safe mode looks for a fixed config
MAX_FAILED_STEPS = 5      # consecutive failing loop steps before the watchdog is left to reset us
_DIRECTION = {IMPORT: "import", EXPORT: "export"}
_RELAY_KEYS = ("power_up", "min_on_ms", "min_off_ms", "max_switches", "window_ms", "auto_off_ms",
               "max_current_ma", "max_power_w", "trip_cooldown_ms", "manual_hold_ms", "link_lost_ms",
               "failsafe")


class Node:
    """One node: call step() about once a second (run() does), or drive it from a test."""

    def __init__(self, board, cfg, fw="dev"):
        self.board = board
        self.cfg = cfg
        self.fw = fw
        self.node_id = cfg["node_id"]
        self.secret = unhexlify(cfg["secret_hex"])
        root = board.root
        self.state = NodeState(root + "/state.json")
        self.boot_id = self.state.boot()
        self.seqs = SeqAllocator(self.state)
        buf = cfg["buffer"]
        self.buf = RingBuffer(root + "/buf", capacity=buf["slots"], slot_bytes=buf["slot_bytes"])
        # If state.json was ever lost, never reuse a seq the buffer still holds.
        if self.buf.last_seq is not None:
            self.seqs.advance_past(self.buf.last_seq)

        self._tick = board.ticks_ms()
        self.now_ms = 0  # monotonic ms since boot (ticks_ms wraps; differences do not)

        self._setup_measurement(cfg)
        self._setup_relays(cfg)

        self.link = make_link(board, cfg, self.boot_id, self.secret)
        self.link.on_message = self._on_message
        self.link.subscribe(wire.topic(self.node_id, "ack"))
        self.link.subscribe(wire.topic(self.node_id, "cmd"))

        self.wdt = board.wdt(cfg["wdt_ms"])
        self.synced = False
        self.last_cid = 0
        self.counters = {"acks": 0, "bad_acks": 0, "bad_cmds": 0, "replayed_cmds": 0, "step_errors": 0}
        self._was_up = False
        self._sent_upto = None    # highest seq published on this connection
        self._resend_at = 0       # when to start over from the oldest un-acked message
        self._next_measure = 0
        self._next_tele = 0
        self._next_health = 0
        self._last_sent_w = None  # per-channel power in the last telemetry, for "significant change"
        self._saved_wh = None     # per-channel Wh last persisted: counters never go back after a reboot
        self._drop_reported = self.buf.dropped
        self._failed_steps = 0
        self.reading = None
        self._measured_at = 0
        self._confirmed = False
        self.first_seq = self.seqs.peek()  # seqs are consecutive within a boot
        self._emit("evt", {"kind": "reboot", "reset_cause": board.reset_cause(),
                           "boot_count": self.state.boot_count})

    # --- set-up ---------------------------------------------------------------------------------

    def _setup_measurement(self, cfg):
        mains = cfg["mains"]
        self.ct_channels = [c for c in cfg["channels"] if c["kind"] == "ct"]
        self.ct_index = [i for i, c in enumerate(cfg["channels"]) if c["kind"] == "ct"]
        vts = [c for c in cfg["channels"] if c["kind"] == "voltage"]
        vt = None
        reads = []
        if vts:  # Meter reads the voltage channel first
            v = vts[0]
            vt = VTCal(v_per_v=v["gain"], phase_deg=v["phase_deg"], offset_mv=v["offset"])
            reads.append(self.board.adc(v["pin"]).read_uv)
        cts = []
        for c in self.ct_channels:
            cts.append(CTCal(a_per_v=c["gain"], phase_deg=c["phase_deg"], offset_ma=c["offset"],
                             floor_ma=c["noise_floor_ma"], rating_a=c["rating_a"]))
            reads.append(self.board.adc(c["pin"]).read_uv)
        self.reads = tuple(reads)
        self.meter = Meter(cts, vt, freq_hz=mains["frequency_hz"], cycles=mains["cycles"],
                           nominal_v=mains["nominal_voltage_v"]) if cts else None
        self.energy = EnergyCounter(len(cts))
        saved = self.state.energy_mwh
        for k, c in enumerate(self.ct_channels):
            self.energy.import_mwh[k] = saved.get(c["name"] + ".in", 0)
            self.energy.export_mwh[k] = saved.get(c["name"] + ".out", 0)

    def _setup_relays(self, cfg):
        relays = {}
        saved = {}
        for i, r in enumerate(cfg["relays"]):
            kwargs = dict((k, r[k]) for k in _RELAY_KEYS)
            relays[i] = Relay(pin=self.board.relay_pin(r["pin"], r["active_low"]), name=r["name"], **kwargs)
            if r["name"] in self.state.relays:
                saved[str(i)] = self.state.relays[r["name"]]
        self.relays = RelayBank(relays).start(self.now_ms, saved)
        self.buttons = dict((i, self.board.button(r["button_pin"])) for i, r in enumerate(cfg["relays"])
                            if r["button_pin"] is not None)
        # Which CT (position in the measurement) watches each relay's circuit.
        self.relay_ct = {}
        for i, r in enumerate(cfg["relays"]):
            if r["channel"] is not None:
                self.relay_ct[i] = self.ct_index.index(r["channel"])
        self._persist_relays()

    # --- the loop -------------------------------------------------------------------------------

    def run(self):
        while True:
            self.step()
            self.board.sleep_ms(max(0, min(50, self._next_measure - self.now_ms)))

    def step(self):
        """One pass: measure when due, run relay rules, report, service the link, feed the watchdog."""
        try:
            self._advance_clock()
            now = self.now_ms
            if now >= self._next_measure:
                self._next_measure = now + LOOP_MS
                self._measure(now)
            for i, button in self.buttons.items():
                if button.pressed() and self.relays.relays[i].manual_toggle(now)["ok"]:
                    self._persist_relays()
            if self.relays.tick(now):
                self._persist_relays()
            self._maybe_telemetry(now)
            self._maybe_health(now)
            self.link.poll(now)
            self._link_changes(now)
            self._send_pending(now)
            self._failed_steps = 0
        except Exception as e:  # one bad step must not kill the node; a run of them lets the WDT reset it
            self._failed_steps += 1
            self.counters["step_errors"] += 1
            self.board.log("step failed (%d in a row): %r" % (self._failed_steps, e))
        if self._failed_steps < MAX_FAILED_STEPS:
            self.wdt.feed()

    def _advance_clock(self):
        t = self.board.ticks_ms()
        self.now_ms += max(0, self.board.ticks_diff(t, self._tick))
        self._tick = t

    def _measure(self, now):
        if self.meter is None:  # a relay-only node still reports its relays
            self.reading = {"channels": [], "v_measured": False, "vrms_mv": None, "freq_mhz": None}
            return
        previous = self.reading
        self.reading = r = self.meter.measure(self.reads, self.board.clock)
        elapsed_ms = LOOP_MS if previous is None else now - self._measured_at
        self._measured_at = now
        for k, row in enumerate(r["channels"]):
            # Export is negative power; without a voltage channel the direction is unknown: import.
            self.energy.add(k, row["power_mw"] / 1000, elapsed_ms)
        for i, k in self.relay_ct.items():
            row = r["channels"][k]
            if self.relays.relays[i].on_measurement(now, row["irms_ma"], row["power_w"]):
                self._persist_relays()
                self._emit("evt", {"kind": "relay_trip", "relay": i, "reason": self.relays.relays[i].tripped,
                                   "irms_ma": row["irms_ma"], "power_w": row["power_w"]})

    def _maybe_telemetry(self, now):
        if self.reading is None:
            return
        powers = [row["power_w"] for row in self.reading["channels"]]
        changed = self._last_sent_w is not None and self.cfg["telemetry"]["change_w"] and any(
            abs(a - b) >= self.cfg["telemetry"]["change_w"] for a, b in zip(powers, self._last_sent_w))
        if now < self._next_tele and not changed:
            return
        self._next_tele = now + self.cfg["telemetry"]["period_s"] * 1000
        self._last_sent_w = powers
        self._persist_energy()
        self._emit("tele", self._telemetry())

    def _telemetry(self):
        r = self.reading
        v_ok = r["v_measured"]
        channels = []
        for k, row in enumerate(r["channels"]):
            ch = self.ct_channels[k]
            energy_in_wh, energy_out_wh = self.energy.energy_wh(k)
            channels.append({
                "n": self.ct_index[k], "name": ch["name"], "irms_ma": row["irms_ma"], "power_w": row["power_w"],
                "va": row["va"], "pf_milli": row["pf_x1000"] if v_ok else None,
                "dir": _DIRECTION.get(row["direction"], "unknown") if v_ok else "unknown",
                "energy_in_wh": energy_in_wh, "energy_out_wh": energy_out_wh,
                "open": row["open"], "clip": row["clipped"]})
        relays = []
        for i, rel in sorted(self.relays.relays.items()):
            snap = rel.snapshot()
            relays.append({"n": i, "name": rel.name, "on": rel.on, "trip": snap["tripped"],
                           "override": snap["override_ms"] > 0, "cause": snap["cause"]})
        return {"ch": channels, "relays": relays, "vrms_mv": r["vrms_mv"] if v_ok else None,
                "freq_mhz": r["freq_mhz"]}

    def _maybe_health(self, now):
        if now < self._next_health:
            return
        self._next_health = now + self.cfg["telemetry"]["health_period_s"] * 1000
        if self.cfg["ntp_host"] and not self.synced:
            self.synced = self.board.sync_time(self.cfg["ntp_host"])
        dropped = self.buf.dropped
        if dropped != self._drop_reported:
            self._emit("evt", {"kind": "buffer_drop", "dropped": dropped - self._drop_reported,
                               "total": dropped})
            self._drop_reported = dropped
        self._emit("health", health(self.board, self.link, self.buf, self.fw, False, None,
                                    self.now_ms, self.counters))

    # --- persistence -----------------------------------------------------------------------------

    def _persist_relays(self):
        for i, rel in self.relays.relays.items():
            self.state.set_relay(rel.name, rel.to_dict())

    def _persist_energy(self):
        # Save before a new whole-Wh value is reported, so a reboot never shows a smaller counter.
        wh = [self.energy.energy_wh(k) for k in range(len(self.ct_channels))]
        if wh == self._saved_wh:
            return
        counters = {}
        for k, c in enumerate(self.ct_channels):
            counters[c["name"] + ".in"] = self.energy.import_mwh[k]
            counters[c["name"] + ".out"] = self.energy.export_mwh[k]
        self.state.set_energy(counters)
        self._saved_wh = wh

    # --- messages out ----------------------------------------------------------------------------

    def _emit(self, kind, fields):
        """Sign a message and put it in the flash buffer; _send_pending() publishes it."""
        msg = origin(self.board, kind, self.node_id, self.boot_id, self.seqs.next_seq(), self.now_ms)
        msg.update(fields)
        payload = wire.encode(msg, self.secret)
        # The buffer entry carries its topic kind, so sending needs no JSON parsing.
        self.buf.append(msg["seq"], kind.encode() + b" " + payload)
        return msg["seq"]

    def _link_changes(self, now):
        up = self.link.up
        if up and not self._was_up:
            self._sent_upto = None  # a new connection: everything un-acked goes again, in order
            self._resend_at = now + RESEND_AFTER_MS
            if not self._confirmed:
                self._confirmed = True
                self.board.firmware_ok()  # a trial firmware that reaches its gateway becomes active
        self._was_up = up
        self.relays.on_link(now, up)

    def _send_pending(self, now):
        if not self.link.up:
            return
        if self._sent_upto is not None and now >= self._resend_at and self.buf.depth():
            self._sent_upto = None  # nothing acked for a while (gateway busy or restarted): start over
        if self._sent_upto is None:
            self._resend_at = now + RESEND_AFTER_MS
        for seq, entry in self.buf.pending(after_seq=self._sent_upto, limit=8):
            space = entry.find(b" ")
            kind = entry[:space].decode()
            if self.link.publish(wire.topic(self.node_id, kind), entry[space + 1:], qos=1) is False:
                break
            self._sent_upto = seq

    # --- messages in -----------------------------------------------------------------------------

    def _secret_for(self, node):
        return self.secret if node == self.node_id else None

    def _on_message(self, topic, payload):
        parsed = wire.parse_topic(topic.decode() if isinstance(topic, bytes) else topic)
        if parsed is None or parsed[0] != self.node_id:
            return
        kind = parsed[1]
        try:
            msg = wire.decode(payload, self._secret_for)
        except wire.WireError as e:
            self.counters["bad_acks" if kind == "ack" else "bad_cmds"] += 1
            self.board.log("rejected %s: %s" % (kind, e))
            return
        if msg["t"] != kind or msg["boot"] != self.boot_id:
            # Signed, but for another topic or an earlier boot: a replay.
            self.counters["bad_acks" if kind == "ack" else "replayed_cmds"] += 1
            return
        if kind == "ack":
            self._on_ack(msg)
        elif kind == "cmd":
            self._on_cmd(msg)

    def _on_ack(self, msg):
        seqs = [s for s in msg["acks"] if isinstance(s, int) and not isinstance(s, bool)]
        freed = self.buf.ack_many(seqs)
        self.counters["acks"] += freed
        if freed:
            self._resend_at = self.now_ms + RESEND_AFTER_MS

    def _on_cmd(self, msg):
        cid = msg["cid"]
        if cid <= self.last_cid:
            self.counters["replayed_cmds"] += 1
            return
        self.last_cid = cid
        self._advance_clock()
        res = self.relays.command(self.now_ms, msg["relay"], msg["action"], cid)
        self._persist_relays()
        reply = {"cid": cid, "ok": res["ok"], "relay": msg["relay"], "state": res["state"] or "off"}
        if not res["ok"]:
            reply["reason"] = res["reason"]
            reply["retry_after_ms"] = res["retry_after_ms"]
        self._emit("reply", reply)


def origin(board, kind, node_id, boot_id, seq, uptime_ms):
    """The fields every node-originated message starts with (docs/PROTOCOL.md)."""
    unix_ms = board.unix_ms()
    return {"v": wire.VERSION, "t": kind, "node": node_id, "boot": boot_id, "seq": seq,
            "ts_ms": unix_ms if unix_ms is not None else uptime_ms, "synced": unix_ms is not None}


def make_link(board, cfg, boot_id, secret):
    """The MQTT link of a node, with its signed retained birth and last-will status messages."""
    def status(online):
        return wire.encode({"v": wire.VERSION, "t": "status", "node": cfg["node_id"], "boot": boot_id,
                            "online": online}, secret)

    mq = cfg["mqtt"]
    return Link(cfg["node_id"], mq["host"], mq["port"], wifi=board.wifi(cfg["wifi"]["ssid"], cfg["wifi"]["password"]),
                birth=lambda: status(True), will=lambda: status(False), keepalive_s=mq["keepalive_s"],
                user=mq["user"], password=mq["password"], ssl=board.tls() if mq["tls"] else None)


def health(board, link, buf, fw, safe_mode, error, uptime_ms, counters):
    """The fields of a health message (without the origin fields)."""
    return {"heap_free_b": board.heap_free(), "uptime_s": uptime_ms // 1000,
            "reset_cause": board.reset_cause(), "rssi_dbm": link.rssi() if link.up else None,
            "buf_depth": buf.depth() if buf else 0, "buf_dropped": buf.dropped if buf else 0,
            "fw": fw, "safe_mode": safe_mode, "error": error, "counters": counters}


class SafeMode:
    """A node whose config is missing or bad: relays off, the error reported, waiting for a fix.

    Outputs: every relay pin the (bad) config names is driven off, since nothing is known to be safe
    to switch on. If the config's identity and link settings are valid, the error is reported to the
    gateway in a health message; it is always logged. When a valid config appears (provisioning with
    mpremote, or OTA), the board resets into normal operation.
    """

    def __init__(self, board, error, raw=None, fw="dev"):
        self.board = board
        self.error = str(error)
        self.fw = fw
        self.path = board.root + "/config.json"
        board.log("SAFE MODE: " + self.error)
        now = 0
        for pin, active_low in _relay_pins(raw):
            try:
                board.relay_pin(pin, active_low).write(now, False)
            except Exception as e:  # a pin the chip does not have: nothing to switch off
                board.log("safe mode: relay pin %r: %r" % (pin, e))
        self.cfg = _link_part(raw)
        self.link = None
        self.wdt = board.wdt(self.cfg["wdt_ms"] if self.cfg else 30000)
        self._tick = board.ticks_ms()
        self.now_ms = 0
        self._next_report = 0
        self._next_poll = SAFE_MODE_POLL_MS
        if self.cfg:
            self.secret = unhexlify(self.cfg["secret_hex"])
            self.state = NodeState(board.root + "/state.json")
            self.boot_id = self.state.boot()
            self.seqs = SeqAllocator(self.state)
            self.link = make_link(board, self.cfg, self.boot_id, self.secret)

    def step(self):
        t = self.board.ticks_ms()
        self.now_ms += max(0, self.board.ticks_diff(t, self._tick))
        self._tick = t
        try:
            self._report(self.now_ms)
        except Exception as e:  # reporting is best effort; waiting for a fixed config is what matters
            self.board.log("safe mode: report failed: %r" % (e,))
        self._poll_config(self.now_ms)
        self.wdt.feed()

    def _report(self, now):
        if self.link:
            self.link.poll(now)
            if self.link.up and now >= self._next_report:
                self._next_report = now + 60000
                msg = origin(self.board, "health", self.cfg["node_id"], self.boot_id, self.seqs.next_seq(), now)
                msg.update(health(self.board, self.link, None, self.fw, True, self.error, now, {}))
                self.link.publish(wire.topic(self.cfg["node_id"], "health"), wire.encode(msg, self.secret))

    def _poll_config(self, now):
        if now >= self._next_poll:
            self._next_poll = now + SAFE_MODE_POLL_MS
            try:
                node_config.load_config(self.path)
            except node_config.ConfigError:
                pass
            else:
                self.board.log("a valid config appeared: restarting")
                self.board.reset()

    def run(self):
        while True:
            self.step()
            self.board.sleep_ms(200)


def _read_raw(path):
    try:
        with open(path) as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


def _relay_pins(raw):
    """(pin, active_low) of every relay a config names, however broken the rest of it is."""
    out = []
    relays = raw.get("relays") if isinstance(raw, dict) else None
    if isinstance(relays, list):
        for r in relays:
            if isinstance(r, dict) and isinstance(r.get("pin"), int) and not isinstance(r.get("pin"), bool):
                out.append((r["pin"], r.get("active_low") is True))
    return out


def _link_part(raw):
    """The config's identity and link settings alone, validated, or None if even those are bad."""
    if not isinstance(raw, dict):
        return None
    part = dict((k, raw[k]) for k in ("node_id", "secret_hex", "chip", "wifi", "mqtt", "wdt_ms") if k in raw)
    try:
        return node_config.validate(part)
    except node_config.ConfigError:
        return None


def boot(board, fw="dev"):
    """What main() runs: the node, or safe mode when the config is missing or bad."""
    path = board.root + "/config.json"
    try:
        cfg = node_config.load_config(path)
    except node_config.ConfigError as e:
        return SafeMode(board, e, _read_raw(path), fw)
    return Node(board, cfg, fw)


def main():
    """Entry point on an ESP32 (device/main.py)."""
    import appdir
    from .hal_esp32 import Board

    boot(Board(), appdir.running()).run()
