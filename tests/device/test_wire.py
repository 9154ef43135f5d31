from binascii import hexlify

from devtest import raises
from ghnode import wire

SECRET = bytes(range(32))
OTHER = bytes(32)


def tele(**over):
    msg = {"v": 1, "t": "tele", "node": "n1", "boot": 7, "seq": 42, "ts_ms": 1700000000000,
           "synced": True, "ch": [{"n": 0, "power_w": 1200, "irms_ma": 5217}], "relays": []}
    msg.update(over)
    return msg


def secret_for(node):
    return SECRET if node == "n1" else None


def test_hmac_matches_rfc4231_vectors():
    # RFC 4231 test cases 2 and 6 (a key longer than the block size), through the interpreter's
    # hmac module where it has one and through the hand-written path an ESP32 uses.
    for hmac_sha256 in (wire.hmac_sha256, wire._hmac_sha256):
        tag = hmac_sha256(b"Jefe", b"what do ya want for nothing?")
        assert hexlify(tag) == b"5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        tag = hmac_sha256(b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First")
        assert hexlify(tag) == b"60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"


def test_constant_time_comparison():
    assert wire._same(b"abc", b"abc")
    assert not wire._same(b"abc", b"abd") and not wire._same(b"abc", b"ab")


def test_canonical_bytes_are_sorted_and_compact():
    got = wire.canonical({"b": [1, True, None], "a": "x\"y", "c": {"z": -3, "y": False}})
    assert got == b'{"a":"x\\"y","b":[1,true,null],"c":{"y":false,"z":-3}}'


def test_round_trip_returns_the_message():
    payload = wire.encode(tele(), SECRET)
    assert wire.decode(payload, secret_for) == tele()


def test_key_order_of_the_payload_does_not_matter():
    # A receiver re-derives canonical bytes, so a re-serialised payload still verifies.
    import json
    msg = json.loads(wire.encode(tele(), SECRET))
    reordered = "{" + ",".join('"%s":%s' % (k, json.dumps(msg[k])) for k in reversed(sorted(msg))) + "}"
    assert wire.decode(reordered.encode(), secret_for)["seq"] == 42


def test_tampered_value_is_rejected():
    payload = wire.encode(tele(), SECRET).replace(b'"seq":42', b'"seq":43')
    assert raises(wire.WireError, wire.decode, payload, secret_for).reason == "bad_mac"


def test_wrong_secret_is_rejected():
    payload = wire.encode(tele(), OTHER)
    assert raises(wire.WireError, wire.decode, payload, secret_for).reason == "bad_mac"


def test_unknown_node_is_rejected():
    payload = wire.encode(tele(node="n9"), SECRET)
    assert raises(wire.WireError, wire.decode, payload, secret_for).reason == "unknown_node"


def test_missing_or_malformed_mac_is_rejected():
    body = wire.canonical(tele())
    assert raises(wire.WireError, wire.decode, body, secret_for).reason == "missing_mac"
    bad = body[:-1] + b',"mac":"' + b"zz" * 32 + b'"}'
    assert raises(wire.WireError, wire.decode, bad, secret_for).reason == "bad_mac"


def test_garbage_is_rejected_with_a_reason():
    assert raises(wire.WireError, wire.decode, b"\xff\x00{", secret_for).reason == "not_json"
    assert raises(wire.WireError, wire.decode, b"[1,2]", secret_for).reason == "not_object"
    assert raises(wire.WireError, wire.decode, b"x" * 5000, secret_for).reason == "too_large"


def test_schema_errors_name_the_field():
    msg = tele()
    del msg["seq"]
    e = raises(wire.WireError, wire.decode, wire.encode(msg, SECRET), secret_for)
    assert e.reason == "missing_field" and "seq" in str(e)
    e = raises(wire.WireError, wire.decode, wire.encode(tele(seq=True), SECRET), secret_for)
    assert e.reason == "bad_field" and "seq" in str(e)
    e = raises(wire.WireError, wire.decode, wire.encode(tele(seq=-1), SECRET), secret_for)
    assert e.reason == "bad_field"
    e = raises(wire.WireError, wire.decode, wire.encode(tele(t="boom"), SECRET), secret_for)
    assert e.reason == "bad_kind"
    e = raises(wire.WireError, wire.decode, wire.encode(tele(v=2), SECRET), secret_for)
    assert e.reason == "bad_version"


def test_extra_fields_of_any_type_never_crash_the_schema_check():
    status = {"v": 1, "t": "status", "node": "n1", "boot": 7, "online": True, "seq": None}
    assert wire.decode(wire.encode(status, SECRET), secret_for)["seq"] is None
    for junk in (None, "x", [1], {"a": 1}, True):
        raises(wire.WireError, wire.decode, wire.encode(tele(seq=junk), SECRET), secret_for)


def test_floats_and_non_ascii_are_refused_at_both_ends():
    assert raises(wire.WireError, wire.encode, tele(power=1.5), SECRET).reason == "bad_type"
    assert raises(wire.WireError, wire.encode, tele(node="n\u00e9"), SECRET).reason == "bad_string"
    # A float smuggled into a payload fails before its tag is even checked.
    payload = wire.encode(tele(), SECRET).replace(b'"power_w":1200', b'"power_w":1200.5')
    assert raises(wire.WireError, wire.decode, payload, secret_for).reason == "bad_type"


def test_topics():
    assert wire.topic("n1", "tele") == "gh/n1/tele"
    assert wire.parse_topic("gh/n1/ack") == ("n1", "ack")
    assert wire.parse_topic("gh//ack") is None
    assert wire.parse_topic("other/n1/ack") is None
