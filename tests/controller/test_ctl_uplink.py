"""The uplink format's parser: every malformed batch or status refused with a reason, nothing else raised."""
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridhive.controller.uplink import (MAX_UPLINK_BYTES, UplinkError, ack_payload, parse_status, parse_topic,
                                        parse_uplink, topic)

from ctl_helpers import batch, node_message, payload


def test_a_valid_batch_keeps_its_items_in_order():
    items = [node_message("house-1", 5), node_message("house-1", 6, "health"), node_message("house-2", 1, "evt"),
             node_message("house-2", 0, "status")]
    up = parse_uplink("gw-1", payload(batch("gw-1", 42, items, ts_ms=1234)))
    assert (up.gw, up.gseq, up.ts_ms) == ("gw-1", 42, 1234)
    assert list(up.items) == items and up.rejected == ()


@pytest.mark.parametrize("gw,raw,reason", [
    ("gw-1", b"x" * (MAX_UPLINK_BYTES + 1), "too_large"),
    ("gw-1", b"{not json", "not_json"),
    ("gw-1", b"\xff\xfe", "not_json"),
    ("gw-1", b"[1, 2]", "not_object"),
    ("GW_1", payload(batch("GW_1", 1, [])), "bad_gateway_id"),
    ("gw-1", payload(batch("gw-1", 1, []) | {"v": 2}), "bad_version"),
    ("gw-1", payload(batch("gw-1", 1, []) | {"v": True}), "bad_version"),
    ("gw-1", payload(batch("gw-2", 1, [])), "gw_mismatch"),
    ("gw-1", payload(batch("gw-1", -1, [])), "bad_gseq"),
    ("gw-1", payload(batch("gw-1", "7", [])), "bad_gseq"),
    ("gw-1", payload(batch("gw-1", True, [])), "bad_gseq"),
    ("gw-1", payload(batch("gw-1", 2 ** 63, [])), "bad_gseq"),
    ("gw-1", payload(batch("gw-1", 1, [], ts_ms=1.5)), "bad_ts"),
    ("gw-1", payload(batch("gw-1", 1, {})), "bad_items"),
    ("gw-1", payload(batch("gw-1", 1, [{}] * 101)), "too_many_items"),
])
def test_bad_envelopes_are_refused_with_a_reason(gw, raw, reason):
    with pytest.raises(UplinkError) as e:
        parse_uplink(gw, raw)
    assert e.value.reason == reason


def _bad_items():
    good = node_message("house-1", 1)
    no_ts = {k: v for k, v in good.items() if k != "ts_ms"}
    return [
        ("item_not_object", "just text"),
        ("item_missing_field", no_ts),
        ("item_bad_field", good | {"seq": "1"}),
        ("item_bad_kind", {"v": 1, "t": "ack", "node": "house-1", "boot": 1, "acks": []}),
        ("item_bad_kind", good | {"t": "gossip"}),
        ("item_bad_node", good | {"node": "House 1"}),
        ("item_bad_type", good | {"vrms_mv": 230.5}),
        ("item_bad_string", good | {"note": "caf\u00e9"}),
        ("item_too_large", good | {"pad": "x" * 5000}),
        ("item_bad_field", good | {"seq": 2 ** 70}),
        ("item_bad_field", node_message("house-1", 1, "health", error=2 ** 70)),  # the registry stores it
        ("item_bad_field", node_message("house-1", 1, "health", error=["x"])),
        ("item_bad_version", good | {"v": 9}),
    ]


def test_bad_items_are_refused_one_by_one_and_the_rest_kept():
    bad = _bad_items()
    good = [node_message("house-1", s) for s in (10, 11)]
    items = [good[0]] + [item for _, item in bad] + [good[1]]
    up = parse_uplink("gw-1", payload(batch("gw-1", 1, items)))
    assert list(up.items) == good
    assert list(up.rejected) == [(i + 1, reason) for i, (reason, _) in enumerate(bad)]


def test_gateway_status():
    raw = payload({"v": 1, "gw": "gw-1", "online": True, "fw": "0.3.0", "nodes": [
        {"node": "house-1", "last_seen_ms": 99, "fw": "1.2.0", "online": True},
        {"node": "house-2", "online": False}]})
    st_ = parse_status("gw-1", raw)
    assert st_.online and st_.fw == "0.3.0" and [n.node for n in st_.nodes] == ["house-1", "house-2"]
    assert st_.nodes[1].last_seen_ms is None and st_.nodes[1].fw is None
    assert parse_status("gw-1", b"") is None   # a cleared retained message


@pytest.mark.parametrize("obj,reason", [
    ({"v": 1, "gw": "gw-1"}, "bad_online"),
    ({"v": 1, "gw": "gw-1", "online": True, "fw": 3}, "bad_fw"),
    ({"v": 1, "gw": "gw-1", "online": True, "fw": "a\u0000b"}, "bad_fw"),
    ({"v": 1, "gw": "gw-1", "online": True, "nodes": {}}, "bad_nodes"),
    ({"v": 1, "gw": "gw-1", "online": True, "nodes": [{"node": "x"}]}, "bad_node_entry"),
    ({"v": 1, "gw": "gw-1", "online": True, "nodes": [{"node": "X!", "online": True}]}, "bad_node_entry"),
    ({"v": 1, "gw": "gw-1", "online": True, "nodes": [{"node": "x", "online": True, "last_seen_ms": -1}]},
     "bad_node_entry"),
    ({"v": 1, "gw": "gw-9", "online": True}, "gw_mismatch"),
])
def test_bad_gateway_status(obj, reason):
    with pytest.raises(UplinkError) as e:
        parse_status("gw-1", payload(obj))
    assert e.value.reason == reason


def test_topics_and_ack():
    assert topic("gw-1", "ack") == "ghc/gw-1/ack"
    assert parse_topic("ghc/gw-1/up") == ("gw-1", "up") and parse_topic("gh/n/tele") is None
    assert json.loads(ack_payload("gw-1", [3, 4])) == {"v": 1, "gw": "gw-1", "acks": [3, 4]}


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                       max_size=4), max_leaves=6)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["v", "gw", "gseq", "ts_ms", "items", "x"]), json_values, max_size=3),
       st.lists(st.dictionaries(st.sampled_from(["v", "t", "node", "boot", "seq", "ts_ms", "synced", "ch",
                                                 "relays", "kind", "online"]), json_values, max_size=6), max_size=3))
def test_fuzzed_uplinks_never_raise_anything_but_uplink_error(envelope, items):
    obj = {"v": 1, "gw": "gw-1", "gseq": 1, "ts_ms": 1, "items": items} | envelope
    try:
        up = parse_uplink("gw-1", json.dumps(obj).encode())
    except UplinkError:
        return
    assert len(up.items) + len(up.rejected) == len(obj["items"])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_are_refused_cleanly(raw):
    for parse in (parse_uplink, parse_status):
        try:
            parse("gw-1", raw)
        except UplinkError:
            pass
