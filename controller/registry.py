"""The fleet registry's rules: how uplinks and status messages change a gateway's or node's record, and
what state a record is in. Pure functions over plain dicts (one key per database column).

Ordering: a node's `seq` only grows, so "newer" is decided by seq, never by arrival order — a batch
resent after a later one was stored cannot roll a node's health back.
"""
from __future__ import annotations

GATEWAY_COLUMNS = ("gw", "first_seen_ms", "last_seen_ms", "last_gseq", "batches", "items", "fw", "online",
                   "status_ms")
NODE_COLUMNS = ("node", "gw", "first_seen_ms", "last_seen_ms", "last_seq", "last_ts_ms", "boot", "fw",
                "heap_free_b", "rssi_dbm", "buf_depth", "buf_dropped", "safe_mode", "error", "uptime_s",
                "reset_cause", "health_seq", "online", "status_gw", "status_gseq")
BOOL_COLUMNS = ("online", "safe_mode")
HEALTH_FIELDS = ("fw", "heap_free_b", "rssi_dbm", "buf_depth", "buf_dropped", "safe_mode", "error", "uptime_s",
                 "reset_cause")
STALE_AFTER_MS = 180_000  # three missed health messages (sent every 60 s by default)


def new_gateway(gw, now_ms):
    return dict.fromkeys(GATEWAY_COLUMNS) | {"gw": gw, "first_seen_ms": now_ms, "last_seen_ms": now_ms,
                                             "last_gseq": -1, "batches": 0, "items": 0}


def new_node(node, now_ms):
    # last_seen_ms stays None until a message or a gateway's last_seen_ms says when it was heard.
    return dict.fromkeys(NODE_COLUMNS) | {"node": node, "first_seen_ms": now_ms, "last_seq": -1, "health_seq": -1,
                                          "status_gseq": -1}


def _latest(*ts_ms):
    return max((t for t in ts_ms if t is not None), default=None)


def apply_batch(gateway, gseq, items_stored, received_ms):
    """A gateway record after one new (not duplicate) batch."""
    return gateway | {"last_seen_ms": max(gateway["last_seen_ms"], received_ms),
                      "last_gseq": max(gateway["last_gseq"], gseq),
                      "batches": gateway["batches"] + 1, "items": gateway["items"] + items_stored}


def apply_items(node, gw, gseq, items, received_ms):
    """A node record after the items of one batch that came from this node."""
    node = node | {"gw": gw, "last_seen_ms": _latest(node["last_seen_ms"], received_ms)}
    for item in items:
        if item["t"] == "status":
            # A node's status has no seq; within one gateway the batch order (gseq) decides.
            if node["status_gw"] != gw or gseq >= node["status_gseq"]:
                node |= {"online": item["online"], "status_gw": gw, "status_gseq": gseq}
            continue
        seq = item["seq"]
        if seq > node["last_seq"]:
            node |= {"last_seq": seq, "last_ts_ms": item["ts_ms"], "boot": item["boot"]}
        if item["t"] == "health" and seq > node["health_seq"]:
            node |= {name: item.get(name) for name in HEALTH_FIELDS} | {"health_seq": seq}
    return node


def apply_gateway_status(gateway, status, received_ms):
    return gateway | {"online": status.online, "fw": status.fw if status.fw is not None else gateway["fw"],
                      "status_ms": received_ms, "last_seen_ms": max(gateway["last_seen_ms"], received_ms)}


def apply_node_status(node, gw, status):
    """A node record after its entry in its gateway's status (the gateway's current view of it)."""
    return node | {"gw": gw, "online": status.online,
                   "last_seen_ms": _latest(node["last_seen_ms"], status.last_seen_ms),
                   "fw": status.fw if status.fw is not None else node["fw"]}


def gateway_state(gateway, now_ms, stale_after_ms=STALE_AFTER_MS):
    """online, offline (its status says so, e.g. its last will) or stale (not heard from lately)."""
    if gateway["online"] is False:
        return "offline"
    if now_ms - gateway["last_seen_ms"] > stale_after_ms:
        return "stale"
    return "online"


def node_state(node, gateway, now_ms, stale_after_ms=STALE_AFTER_MS):
    """unreachable (its gateway is not online), offline, safe-mode, stale or online."""
    if gateway is not None and gateway_state(gateway, now_ms, stale_after_ms) != "online":
        return "unreachable"
    if node["online"] is False:
        return "offline"
    if node["safe_mode"]:
        return "safe-mode"
    if node["last_seen_ms"] is None or now_ms - node["last_seen_ms"] > stale_after_ms:
        return "stale"
    return "online"
