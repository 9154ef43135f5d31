"""The ingest core: one MQTT message in, one Verdict out. No I/O.

Order of checks, each with the reason it is counted by:
1. topic `gh/<node>/<kind>` with a node-originated kind (`bad_topic`);
2. `wire.verify` — size, JSON, schema, known node, HMAC (its WireError reasons: `too_large`,
   `not_json`, `missing_mac`, `bad_mac`, `unknown_node`, ...);
3. the topic names the node and type inside the signed message (`topic_mismatch`: a node must
   not republish another node's message under its own topic);
4. sequence: at or below the node's pruned floor (`replay`), already stored or pending
   (outcome `duplicate`, normal after a reconnect: acknowledged again, stored once);
5. content: channel/relay lists (`bad_schema`), negative counters (`negative_energy`), counters
   lower than the last reading of the same boot (`counter_decreased`), power beyond what the
   circuit can carry (`power_out_of_range`), a synced clock far ahead of ours (`future_timestamp`).

Messages that fail step 1-3 are not the node's or not intact, and get no ack. A message that is
authentic but fails 4-5 is acknowledged anyway and kept in quarantine: it came from the node and
will never become valid, so leaving it unacknowledged would only make the node resend it forever.

The core also keeps what the gateway knows of each node (last boot id, highest seq, counters)
and turns counter increases into per-interval import/export energy (see gateway.energy).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from ghnode import wire

from .config import GatewayConfig, Registry
from .energy import split_energies

ACCEPTED = "accepted"
DUPLICATE = "duplicate"
REJECTED = "rejected"
STATUS = "status"

MAX_LIST = 8  # channels and relays per node (NODE_CONFIG)


@dataclass(frozen=True)
class Limits:
    max_future_ms: int = 300_000
    max_power_w: int = 100_000
    line_voltage_v: int = 400
    rating_factor: float = 1.5
    interval_ms: int = 900_000

    @classmethod
    def of(cls, cfg: GatewayConfig) -> "Limits":
        i = cfg.ingest
        return cls(max_future_ms=i.max_future_ms, max_power_w=i.max_power_w, line_voltage_v=i.line_voltage_v,
                   rating_factor=i.rating_factor, interval_ms=cfg.storage.interval_s * 1000)

    def power_limit_w(self, rating_a: float | None) -> float:
        """The largest |power| a circuit can show: its clamp's rating with headroom at line
        voltage (covers three-phase), and never more than the site limit."""
        if rating_a is None:
            return self.max_power_w
        return min(self.max_power_w, self.rating_factor * rating_a * self.line_voltage_v)


ACKS_PER_MESSAGE = 200  # keeps an ack payload well under the node's 4096-byte limit


def ack_payloads(node: str, boot: int, seqs: list[int], secret: bytes) -> list[bytes]:
    """The signed acks that name `seqs` to `node` in its boot `boot`, ACKS_PER_MESSAGE at most each."""
    return [wire.encode({"v": wire.VERSION, "t": "ack", "node": node, "boot": boot,
                         "acks": seqs[i:i + ACKS_PER_MESSAGE]}, secret) for i in range(0, len(seqs), ACKS_PER_MESSAGE)]


class ChannelMark(NamedTuple):
    """The last accepted counter reading of one channel: the baseline for the next delta."""
    seq: int
    boot: int
    time_ms: int
    in_wh: int
    out_wh: int


@dataclass
class NodeTrack:
    max_seq: int = -1
    floor_seq: int = -1  # every seq at or below this was stored and has since been pruned
    boot: int | None = None  # the node's current boot id: acks and commands must name it
    last_seen_ms: int | None = None
    fw: str | None = None
    online: bool | None = None
    channels: dict[int, ChannelMark] = field(default_factory=dict)


class IntervalEnergy(NamedTuple):  # a tuple: made for every reading, a frozen dataclass costs 3x
    node: str
    ch: int
    start_ms: int
    import_wh: int
    export_wh: int


@dataclass(slots=True)
class Verdict:
    outcome: str
    node: str | None = None
    reason: str | None = None
    detail: str = ""
    msg: dict | None = None
    body: str | None = None  # msg's canonical JSON (what its tag covers): stored and forwarded as is
    ack: bool = False  # acknowledge msg["seq"] to the node once stored
    quarantine: bool = False  # store in quarantine (authentic but invalid)
    time_ms: int = 0  # when the reading was taken, on the gateway's clock
    energy: list[IntervalEnergy] = field(default_factory=list)
    marks: dict[int, ChannelMark] = field(default_factory=dict)  # new counter baselines
    counter_resets: int = 0


class Ingest:
    """Decides about every node message and keeps per-node state between messages.

    `is_known(node, seq)` answers whether (node, seq) is already stored (or quarantined); it is
    asked only for a seq at or below the node's highest, so the common path never leaves memory.
    Call `stored()` after the accepted messages have been committed.
    """

    def __init__(self, registry: Registry, limits: Limits, is_known: Callable[[str, int], bool],
                 tracks: dict[str, NodeTrack] | None = None):
        self.registry = registry
        self.limits = limits
        self._is_known = is_known
        self.tracks: dict[str, NodeTrack] = tracks if tracks is not None else {}
        self._pending: dict[str, set[int]] = {}
        self._committing: dict[str, set[int]] | None = None  # the batch being written, see flushing()
        self._limits_w: dict[tuple[str, int], float] = {}
        self.accepted: Counter = Counter()  # by message type
        self.rejected: Counter = Counter()  # by reason
        self.duplicates = 0
        self.counter_resets = 0

    def track(self, node: str) -> NodeTrack:
        return self.tracks.setdefault(node, NodeTrack())

    def flushing(self) -> None:
        """The pending messages are being committed (by another thread): they count as pending
        until stored(), and what arrives from now on is the next batch."""
        self._committing, self._pending = self._pending, {}

    def stored(self) -> None:
        """The batch handed over by flushing() (without it: every pending message) is committed:
        duplicates of its messages are now found in storage."""
        if self._committing is None:
            self._pending.clear()
        self._committing = None

    def receive(self, topic: str, payload: bytes, rx_ms: int) -> Verdict:
        parsed = wire.parse_topic(topic)
        if parsed is None or parsed[1] not in wire.UP_KINDS:
            return self._reject(None, "bad_topic", topic[:80])
        topic_node, kind = parsed
        try:
            msg, body = wire.verify(payload, self.registry.secret_for)
        except wire.WireError as e:
            return self._reject(topic_node, e.reason, str(e))
        body = body.decode()
        node = msg["node"]
        if node != topic_node or msg["t"] != kind:
            return self._reject(topic_node, "topic_mismatch", f"{msg['t']} from {node} on {topic}")
        track = self.track(node)
        if kind == "status":
            if msg["online"]:
                track.boot = msg["boot"]
            track.online = msg["online"]
            return Verdict(STATUS, node=node, msg=msg, time_ms=rx_ms)

        seq = msg["seq"]
        if seq <= track.floor_seq:
            return self._reject(node, "replay", f"seq {seq} <= pruned floor {track.floor_seq}", msg, body, ack=True)
        if (seq in self._pending.get(node, ()) or (self._committing and seq in self._committing.get(node, ()))
                or (seq <= track.max_seq and self._is_known(node, seq))):
            self.duplicates += 1
            return Verdict(DUPLICATE, node=node, msg=msg, body=body, ack=True)

        time_ms = msg["ts_ms"] if msg["synced"] else rx_ms
        if msg["synced"] and msg["ts_ms"] > rx_ms + self.limits.max_future_ms:
            return self._reject(node, "future_timestamp", f"ts_ms {msg['ts_ms']} is "
                                f"{(msg['ts_ms'] - rx_ms) // 1000} s ahead", msg, body, ack=True, quarantine=True)
        verdict = Verdict(ACCEPTED, node=node, msg=msg, body=body, ack=True, time_ms=time_ms)
        if kind == "tele":
            problem = self._check_tele(node, msg, track, verdict)
            if problem:
                reason, detail = problem
                return self._reject(node, reason, detail, msg, body, ack=True, quarantine=True)

        # Accepted: only now does the node's state change.
        self._pending.setdefault(node, set()).add(seq)
        track.max_seq = max(track.max_seq, seq)
        if track.boot is None:
            # The status birth is the authority on the current boot (after a reboot the node
            # resends old-boot messages first); a message only fills in a boot not yet known.
            track.boot = msg["boot"]
        track.last_seen_ms = rx_ms
        if kind == "health":
            track.fw = msg["fw"]
        track.channels.update(verdict.marks)
        self.counter_resets += verdict.counter_resets
        self.accepted[kind] += 1
        return verdict

    def _reject(self, node, reason, detail, msg=None, body=None, ack=False, quarantine=False) -> Verdict:
        self.rejected[reason] += 1
        return Verdict(REJECTED, node=node, reason=reason, detail=detail, msg=msg, body=body, ack=ack,
                       quarantine=quarantine)

    def _check_tele(self, node: str, msg: dict, track: NodeTrack, verdict: Verdict):
        """(reason, detail) for the first problem, or None; fills verdict.energy and .marks."""
        channels, relays = msg["ch"], msg["relays"]
        problem = _check_list("ch", channels, ("power_w",)) or _check_list("relays", relays, ())
        if problem:
            return "bad_schema", problem
        vrms = msg.get("vrms_mv")
        if vrms is not None and (not _is_int(vrms) or vrms < 0):
            return "bad_schema", f"vrms_mv must be an integer >= 0, got {vrms!r}"
        seq, boot, time_ms = msg["seq"], msg["boot"], verdict.time_ms
        marks = track.channels
        for ch in channels:
            n, get = ch["n"], ch.get
            irms, va, in_wh, out_wh = get("irms_ma"), get("va"), get("energy_in_wh"), get("energy_out_wh")
            # JSON gives exact types, so this is _is_int-or-None for all five at C speed.
            if not set(map(type, (irms, va, in_wh, out_wh, get("pf_milli")))) <= _INT_OR_NONE:
                name = next(k for k in _CH_INT_FIELDS if get(k) is not None and not _is_int(get(k)))
                return "bad_schema", f"ch[{n}].{name} must be an integer or null, got {get(name)!r}"
            if (in_wh is None) != (out_wh is None):
                return "bad_schema", f"ch[{n}] has only one of energy_in_wh / energy_out_wh"
            if in_wh is not None and (in_wh < 0 or out_wh < 0):
                return "negative_energy", f"ch[{n}] energy_in_wh={in_wh} energy_out_wh={out_wh}"
            limit_w = self._limit_w(node, n)
            for name, value in (("power_w", ch["power_w"]), ("va", va)):
                if value is not None and abs(value) > limit_w:
                    return "power_out_of_range", f"ch[{n}].{name}={value} exceeds {limit_w:.0f} W"
            if (va or 0) < 0 or (irms or 0) < 0:
                return "power_out_of_range", f"ch[{n}] has a negative va or irms_ma"
            if in_wh is None:
                continue
            mark, new_mark = marks.get(n), ChannelMark(seq, boot, time_ms, in_wh, out_wh)
            if mark is None:
                verdict.marks[n] = new_mark  # first reading: the baseline, no energy yet
            elif seq < mark.seq:
                continue  # a late reading from before the baseline: its energy is in the next delta
            elif in_wh < mark.in_wh or out_wh < mark.out_wh:
                if boot == mark.boot:
                    return "counter_decreased", (f"ch[{n}] in {mark.in_wh}->{in_wh} Wh, "
                                                 f"out {mark.out_wh}->{out_wh} Wh within boot {boot}")
                # A new boot with lower counters: the node lost its state file. Start a new baseline.
                verdict.marks[n] = new_mark
                verdict.counter_resets += 1
            else:
                verdict.marks[n] = new_mark
                for start, imp, exp in split_energies(mark.time_ms, time_ms, in_wh - mark.in_wh,
                                                      out_wh - mark.out_wh, self.limits.interval_ms):
                    verdict.energy.append(IntervalEnergy(node, n, start, imp, exp))
        return None

    def _limit_w(self, node: str, n: int) -> float:
        """power_limit_w of a node's channel, remembered (nodes and channels come from the registry)."""
        limit = self._limits_w.get((node, n))
        if limit is None:
            entry = self.registry.get(node)
            circuit = entry.channels.get(n) if entry else None
            limit = self._limits_w[(node, n)] = self.limits.power_limit_w(circuit.rating_a if circuit else None)
        return limit


# The integer-or-null fields of a channel, in the order they are checked.
_CH_INT_FIELDS = ("irms_ma", "va", "energy_in_wh", "energy_out_wh", "pf_milli")
_INT_OR_NONE = {int, type(None)}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_list(name: str, items: list, required: tuple[str, ...]) -> str | None:
    # JSON gives exact types: `type(x) is int` is _is_int at a third of its cost.
    if len(items) > MAX_LIST:
        return f"{name} has {len(items)} entries, at most {MAX_LIST}"
    seen = set()
    for i, item in enumerate(items):
        if type(item) is not dict:
            return f"{name}[{i}] must be an object"
        n = item.get("n")
        if type(n) is not int or not 0 <= n < MAX_LIST or n in seen:
            return f"{name}[{i}].n must be a unique index 0-{MAX_LIST - 1}, got {n!r}"
        seen.add(n)
        for key in required:
            if type(item.get(key)) is not int:
                return f"{name}[{i}].{key} must be an integer"
        if name == "relays" and type(item.get("on")) is not bool:
            return f"relays[{i}].on must be true or false"
    return None


class RejectLog:
    """Log each (node, reason) at most once per interval, saying how many were suppressed."""

    MAX_KEYS = 10_000  # forged node names must not grow this without bound

    def __init__(self, interval_ms: int):
        self.interval_ms = interval_ms
        self._last: dict[tuple, list[int]] = {}  # key -> [last logged ms, suppressed since]

    def should_log(self, node: str | None, reason: str, now_ms: int) -> int | None:
        """None to stay quiet; else the number of messages suppressed since the last line."""
        key = (node, reason)
        entry = self._last.get(key)
        if entry is not None and now_ms - entry[0] < self.interval_ms:
            entry[1] += 1
            return None
        if len(self._last) >= self.MAX_KEYS:
            self._last = {k: v for k, v in self._last.items() if now_ms - v[0] < self.interval_ms}
            if len(self._last) >= self.MAX_KEYS:
                return None
        suppressed = entry[1] if entry else 0
        self._last[key] = [now_ms, 0]
        return suppressed
