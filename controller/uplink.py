"""The gateway -> controller uplink format: parsing and validation. Pure functions, no I/O.

Topics: `ghc/<gw>/up` (batches), `ghc/<gw>/status` (retained gateway status), `ghc/<gw>/ack` (the
controller's acknowledgements). docs/CONTROLLER.md describes every field.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ghnode import wire

VERSION = 1
TOPIC_ROOT = "ghc"
MAX_ITEMS = 100
# 100 node messages of at most wire.MAX_PAYLOAD_BYTES each, plus the envelope.
MAX_UPLINK_BYTES = MAX_ITEMS * wire.MAX_PAYLOAD_BYTES + 4096
MAX_STATUS_BYTES = 256 * 1024
ITEM_KINDS = ("tele", "health", "reply", "evt", "status")
# Gateway and node ids: lowercase letters, digits and '-', 1-32 characters (docs/PROTOCOL.md).
ID_RE = re.compile(r"[a-z0-9-]{1,32}\Z")
# Integers that become database columns must fit a signed 64-bit column in both back ends.
MAX_INT = 2 ** 63 - 1
_STORED_INTS = ("seq", "ts_ms", "boot", "heap_free_b", "uptime_s", "rssi_dbm", "buf_depth", "buf_dropped")


class UplinkError(ValueError):
    """A payload the controller refuses. `reason` is a short code it is counted by."""

    def __init__(self, reason, detail=""):
        super().__init__(reason + (": " + detail if detail else ""))
        self.reason = reason


@dataclass(frozen=True)
class Uplink:
    gw: str
    gseq: int
    ts_ms: int
    items: tuple                   # valid node messages, in the order the gateway sent them
    bodies: tuple                  # the canonical JSON text of each of `items` (what the node signed)
    rejected: tuple = ()           # (index in `items` of the payload, reason) of refused items


@dataclass(frozen=True)
class NodeStatus:
    node: str
    online: bool
    last_seen_ms: int | None = None
    fw: str | None = None


@dataclass(frozen=True)
class GatewayStatus:
    gw: str
    online: bool
    fw: str | None
    nodes: tuple                   # NodeStatus


def topic(gw, kind):
    return f"{TOPIC_ROOT}/{gw}/{kind}"


def parse_topic(name):
    """'ghc/<gw>/<kind>' -> (gw, kind), or None for any other topic."""
    parts = name.split("/")
    if len(parts) != 3 or parts[0] != TOPIC_ROOT:
        return None
    return parts[1], parts[2]


def ack_payload(gw, gseqs):
    return json.dumps({"v": VERSION, "gw": gw, "acks": list(gseqs)}, separators=(",", ":")).encode()


def _is_int(value, low=0, high=MAX_INT):
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_text(value, max_len=64):
    # Printable ASCII only: what the node wire format allows, and safe in every database's TEXT.
    return isinstance(value, str) and len(value) <= max_len and all(" " <= c <= "~" for c in value)


def _load(payload, max_bytes):
    if len(payload) > max_bytes:
        raise UplinkError("too_large", f"{len(payload)} bytes")
    try:
        obj = wire.parse(payload)  # floats come out as values every integer check refuses
    except (ValueError, UnicodeError):
        raise UplinkError("not_json") from None
    if not isinstance(obj, dict):
        raise UplinkError("not_object")
    return obj


def _check_envelope(obj, gw):
    if not ID_RE.match(gw):
        raise UplinkError("bad_gateway_id", repr(gw))
    if obj.get("v") != VERSION or isinstance(obj.get("v"), bool):
        raise UplinkError("bad_version", repr(obj.get("v")))
    if obj.get("gw") != gw:
        raise UplinkError("gw_mismatch", f"topic says {gw!r}, payload {obj.get('gw')!r}")


def check_item(item):
    """The canonical text of `item`; raises UplinkError unless it is a node message as
    ghnode.wire.decode returns it."""
    if not isinstance(item, dict):
        raise UplinkError("item_not_object")
    try:
        wire.check_schema(item)
        body = wire.canonical_parsed(item)  # also refuses floats and non-printable strings
    except wire.WireError as e:
        raise UplinkError("item_" + e.reason, str(e)) from None
    size = len(body)
    if item["t"] not in ITEM_KINDS:
        raise UplinkError("item_bad_kind", repr(item["t"]))
    if not ID_RE.match(item["node"]):
        raise UplinkError("item_bad_node", repr(item["node"]))
    if size > wire.MAX_PAYLOAD_BYTES:
        raise UplinkError("item_too_large", f"{size} bytes")
    for name in _STORED_INTS:  # None is allowed where the schema allows it (rssi_dbm off Wi-Fi)
        if item.get(name) is not None and not _is_int(item[name], -MAX_INT):
            raise UplinkError("item_bad_field", f"{name} must be an integer in 64 bits")
    # The registry stores a health message's `error` in a TEXT column (the schema leaves it out:
    # it is optional). Anything else there would fail the batch's transaction on every resend.
    if item["t"] == "health" and item.get("error") is not None and not isinstance(item["error"], str):
        raise UplinkError("item_bad_field", "error must be a string or null")
    return body.decode()


def parse_uplink(gw, payload):
    """An Uplink from the payload published on ghc/<gw>/up; raises UplinkError.

    A bad envelope refuses the whole batch (it is not acknowledged). A bad item only refuses that
    item: it can never become valid on a resend, so the rest of the batch is stored and acknowledged.
    """
    obj = _load(payload, MAX_UPLINK_BYTES)
    _check_envelope(obj, gw)
    if not _is_int(obj.get("gseq")):
        raise UplinkError("bad_gseq", repr(obj.get("gseq")))
    if not _is_int(obj.get("ts_ms")):
        raise UplinkError("bad_ts", repr(obj.get("ts_ms")))
    items = obj.get("items")
    if not isinstance(items, list):
        raise UplinkError("bad_items")
    if len(items) > MAX_ITEMS:
        raise UplinkError("too_many_items", f"{len(items)} > {MAX_ITEMS}")
    good, bodies, rejected = [], [], []
    for index, item in enumerate(items):
        try:
            bodies.append(check_item(item))
        except UplinkError as e:
            rejected.append((index, e.reason))
        else:
            good.append(item)
    return Uplink(gw, obj["gseq"], obj["ts_ms"], tuple(good), tuple(bodies), tuple(rejected))


def parse_status(gw, payload):
    """A GatewayStatus from ghc/<gw>/status; None for an empty payload (a cleared retained message)."""
    if not payload:
        return None
    obj = _load(payload, MAX_STATUS_BYTES)
    _check_envelope(obj, gw)
    if not isinstance(obj.get("online"), bool):
        raise UplinkError("bad_online")
    fw = obj.get("fw")
    if fw is not None and not _is_text(fw):
        raise UplinkError("bad_fw")
    nodes = obj.get("nodes", [])
    if not isinstance(nodes, list):
        raise UplinkError("bad_nodes")
    out = []
    for n in nodes:
        if not isinstance(n, dict) or not isinstance(n.get("node"), str) or not ID_RE.match(n["node"]):
            raise UplinkError("bad_node_entry", repr(n)[:80])
        if not isinstance(n.get("online"), bool):
            raise UplinkError("bad_node_entry", f"{n['node']}: online must be true or false")
        seen = n.get("last_seen_ms")
        if seen is not None and not _is_int(seen):
            raise UplinkError("bad_node_entry", f"{n['node']}: last_seen_ms")
        node_fw = n.get("fw")
        if node_fw is not None and not _is_text(node_fw):
            raise UplinkError("bad_node_entry", f"{n['node']}: fw")
        out.append(NodeStatus(n["node"], n["online"], seen, node_fw))
    return GatewayStatus(gw, obj["online"], fw, tuple(out))
