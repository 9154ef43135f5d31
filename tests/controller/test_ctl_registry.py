"""The fleet registry's rules, without a database."""
from gridhive.controller import registry as r
from gridhive.controller.uplink import GatewayStatus, NodeStatus

from ctl_helpers import node_message


def test_health_is_taken_from_the_newest_seq_not_the_latest_arrival():
    node = r.new_node("house-1", 1_000)
    node = r.apply_items(node, "gw-1", 2, [node_message("house-1", 20, "health", fw="2.0.0")], 2_000)
    # A batch resent late carries an older health message: it must not roll the firmware back.
    node = r.apply_items(node, "gw-1", 1, [node_message("house-1", 10, "health", fw="1.0.0"),
                                           node_message("house-1", 11)], 3_000)
    assert node["fw"] == "2.0.0" and node["health_seq"] == 20 and node["last_seq"] == 20
    assert node["last_seen_ms"] == 3_000 and node["first_seen_ms"] == 1_000


def test_health_fields_are_copied():
    node = r.apply_items(r.new_node("n", 0), "gw-1", 1, [node_message(
        "n", 3, "health", heap_free_b=12_345, rssi_dbm=-70, buf_depth=4, buf_dropped=1, safe_mode=True,
        error="config: missing wifi.ssid", reset_cause="wdt")], 0)
    assert (node["heap_free_b"], node["rssi_dbm"], node["buf_depth"], node["buf_dropped"]) == (12_345, -70, 4, 1)
    assert node["safe_mode"] is True and node["error"] == "config: missing wifi.ssid" and node["reset_cause"] == "wdt"


def test_node_status_follows_batch_order_within_a_gateway():
    node = r.new_node("n", 0)
    offline = node_message("n", 0, "status") | {"online": False}
    online = node_message("n", 0, "status")
    node = r.apply_items(node, "gw-1", 5, [offline], 0)
    node = r.apply_items(node, "gw-1", 4, [online], 0)      # an older batch arriving late
    assert node["online"] is False
    node = r.apply_items(node, "gw-2", 1, [online], 0)      # the node moved to another gateway
    assert node["online"] is True and node["gw"] == "gw-2"


def test_gateway_batches_and_status():
    gw = r.new_gateway("gw-1", 100)
    gw = r.apply_batch(gw, 7, 20, 200)
    gw = r.apply_batch(gw, 5, 3, 150)
    assert (gw["last_gseq"], gw["batches"], gw["items"], gw["last_seen_ms"]) == (7, 2, 23, 200)
    gw = r.apply_gateway_status(gw, GatewayStatus("gw-1", True, "0.3.0", ()), 300)
    assert gw["online"] and gw["fw"] == "0.3.0" and gw["status_ms"] == 300
    gw = r.apply_gateway_status(gw, GatewayStatus("gw-1", False, None, ()), 400)   # last will: no fw
    assert gw["online"] is False and gw["fw"] == "0.3.0"


def test_node_entry_of_a_gateway_status():
    # Known only from its gateway's status: last seen is what the gateway says, not when we heard it.
    node = r.apply_node_status(r.new_node("n", 90_000), "gw-1", NodeStatus("n", False, 5_000, "1.1.0"))
    assert node["online"] is False and node["last_seen_ms"] == 5_000 and node["fw"] == "1.1.0"
    node = r.apply_node_status(node, "gw-1", NodeStatus("n", True))
    assert node["online"] is True and node["last_seen_ms"] == 5_000 and node["fw"] == "1.1.0"


def test_states():
    now = 1_000_000
    gw = r.new_gateway("gw-1", now) | {"online": True}
    node = r.new_node("n", now) | {"online": True, "safe_mode": False, "last_seen_ms": now}
    assert r.gateway_state(gw, now) == "online" and r.node_state(node, gw, now) == "online"
    assert r.node_state(node | {"safe_mode": True}, gw, now) == "safe-mode"
    assert r.node_state(node | {"online": False}, gw, now) == "offline"
    assert r.node_state(node | {"last_seen_ms": None}, gw, now) == "stale"       # listed, never heard from
    assert r.node_state(node, gw, now + r.STALE_AFTER_MS + 1) == "unreachable"   # its gateway went quiet
    assert r.node_state(node, gw | {"last_seen_ms": now * 2}, now + r.STALE_AFTER_MS + 1) == "stale"
    assert r.gateway_state(gw | {"online": False}, now) == "offline"
    assert r.node_state(node, gw | {"online": False}, now) == "unreachable"
