"""Property test: on CPython, ghnode.wire's fast paths (orjson on a payload laid out as encode()
writes it, and json.JSONDecoder/JSONEncoder on any other) give the same verdict, message and
canonical bytes as the portable path MicroPython runs, for any payload, and the same canonical
bytes (or error) for any object a sender passes to encode().

The portable path is the same module with the fast paths switched off (`_orjson = _DECODER =
_ENCODER = None`). Payloads are signed messages with a random extra field — ints, strings of
printable ASCII, quotes, backslashes, control, DEL and non-ASCII characters, floats,
NaN/Infinity, lists, objects — written with random key order, spacing and escaping, or laid out
as a node sends them (sorted, compact, the tag last) with the tag over exactly those bytes, so
that a body the canonical form would refuse arrives with an authentic tag; sometimes with a
wrong tag.
"""
import hmac
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ghnode import wire

SECRET = bytes(range(32))
OTHER = bytes(32)
chars = st.sampled_from(list("az09 ~/\"\\") + ["\n", "\t", "\x00", "\x7f", "\u00e9", "\u2603", "\U0001f600"])
scalars = st.one_of(st.integers(-2**70, 2**70), st.text(chars, max_size=6), st.booleans(), st.none(),
                    st.floats(allow_nan=True, allow_infinity=True))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(chars, max_size=4), inner, max_size=4)),
                      max_leaves=12)


def faults(value) -> set[str]:
    """The reasons the canonical form refuses `value` for (both paths agree on which one when
    there is at most one; with several, each path names the first it meets)."""
    if isinstance(value, float):
        return {"bad_type"}
    if isinstance(value, str):
        return set() if all(" " <= c <= "~" for c in value) else {"bad_string"}
    if isinstance(value, list):
        return set().union(*map(faults, value))
    if isinstance(value, dict):
        return set().union(*map(faults, value), *map(faults, value.values()))
    return set()


def fits64(value) -> bool:
    """No int beyond 64 bits (orjson parses those as floats, so they take the json path)."""
    if isinstance(value, int):
        return -2**63 <= value < 2**64
    if isinstance(value, (list, dict)):
        return all(map(fits64, value)) and (not isinstance(value, dict) or all(map(fits64, value.values())))
    return True


def tagged(body: bytes, key: bytes = SECRET) -> bytes:
    """`body` with a tag over exactly its bytes, laid out as a node sends it (whatever it holds)."""
    return body[:-1] + b',"mac":"' + wire.hmac_sha256(key, body).hex().encode() + b'"}'


def portable(payload, fn=None):
    saved = wire._orjson, wire._DECODER, wire._ENCODER
    wire._orjson = wire._DECODER = wire._ENCODER = None
    try:
        return (fn or outcome)(payload)
    finally:
        wire._orjson, wire._DECODER, wire._ENCODER = saved


def outcome(payload):
    try:
        msg, body = wire.verify(payload, lambda node: SECRET if node == "n1" else None)
    except wire.WireError as e:
        return ("rejected", e.reason)
    return ("accepted", json.dumps(msg, sort_keys=True), body)


@settings(max_examples=600, deadline=None)
@given(extra=values, order=st.randoms(use_true_random=False), ensure_ascii=st.booleans(), spaced=st.booleans(),
       forged=st.booleans(), as_sent=st.booleans())
def test_fast_paths_agree_with_the_portable_path(extra, order, ensure_ascii, spaced, forged, as_sent):
    msg = {"v": 1, "t": "tele", "node": "n1", "boot": 7, "seq": 3, "ts_ms": 1_700_000_000_000, "synced": True,
           "ch": [{"n": 0, "power_w": 5}], "relays": [], "x": extra}
    key = OTHER if forged else SECRET
    if as_sent:
        # A node's layout, the tag over exactly these bytes, whatever they hold.
        body = json.dumps(msg, sort_keys=True, separators=(",", ":"), ensure_ascii=ensure_ascii).encode()
        payload = tagged(body, key)
    else:
        # The tag over what the portable canonical form would be; a float or bad string makes it
        # refuse to sign, so sign the fault-free skeleton then (the payload is refused either way).
        try:
            tag = wire.hmac_sha256(key, wire.canonical(msg)).hex()
        except wire.WireError:
            tag = "0" * 64
        keys = list(msg) + ["mac"]
        order.shuffle(keys)
        full = dict(msg, mac=tag)
        sep = (", ", ": ") if spaced else (",", ":")
        text = "{" + sep[0].join(json.dumps(k) + sep[1] + json.dumps(full[k], ensure_ascii=ensure_ascii,
                                                                         separators=sep) for k in keys) + "}"
        payload = text.encode()
    fast, slow = outcome(payload), portable(payload)
    found = faults(extra)
    if len(found) > 1:
        assert fast[0] == slow[0] == "rejected" and fast[1] in found and slow[1] in found
    else:
        assert fast == slow
        if found:
            assert fast == ("rejected", next(iter(found)))
        else:
            assert fast[0] == ("rejected" if forged else "accepted")
    # The orjson path takes what it can vouch for and nothing the portable path refuses.
    taken = wire._verify_as_sent(payload, lambda node: SECRET if node == "n1" else None) is not None
    assert taken == (as_sent and not forged and not found and fits64(extra))


def test_the_orjson_path_takes_what_encode_writes():
    msg = {"v": 1, "t": "tele", "node": "n1", "boot": 7, "seq": 3, "ts_ms": 1_700_000_000_000, "synced": True,
           "ch": [{"n": 0, "power_w": -5, "name": "mains"}], "relays": [], "x": [None, True, "a\\\"b"]}
    payload = wire.encode(msg, SECRET)
    assert wire._verify_as_sent(payload, lambda node: SECRET) == (msg, wire.canonical(msg))
    assert wire._verify_as_sent(payload, lambda node: OTHER) is None
    assert wire._verify_as_sent(payload, lambda node: None) is None
    # A string with what a float would show ("1.2.3", "e-") goes the full way, and is accepted there.
    for text in ("1.2.3", "type-e", "e+"):
        payload = wire.encode(dict(msg, fw=text), SECRET)
        assert wire._verify_as_sent(payload, lambda node: SECRET) is None
        assert outcome(payload)[0] == "accepted"



# Every spelling, including orjson's own ("1e+20", "5e-324", "1e-7": what it writes back unchanged).
FLOATS = ["NaN", "-Infinity", "1e400", "1.0", "-0.0", "1e5", "2.5E-3", "1e+20", "5e-324", "1e-7", "-1e+300",
          "18446744073709551616", "-9223372036854775809"]


@pytest.mark.parametrize("text", FLOATS[:5])
def test_every_float_spelling_is_refused_on_both_paths(text):
    msg = {"v": 1, "t": "status", "node": "n1", "boot": 7, "online": True}
    payload = wire.encode(msg, SECRET)[:-1] + b',"x":' + text.encode() + b"}"
    assert outcome(payload) == portable(payload) == ("rejected", "bad_type")


@pytest.mark.parametrize("text", FLOATS)
@pytest.mark.parametrize("where", ['"x":{}', '"x":[1,{}]', '"x":{{"y":{}}}'])
def test_a_float_under_an_authentic_tag_is_refused_on_every_path(text, where):
    # The orjson path reads floats (and ints beyond 64 bits, as floats): it must not take them.
    body = ('{"boot":7,"node":"n1","online":true,"t":"status","v":1,' + where.format(text) + "}").encode()
    body = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode() if text[0].isdigit() else body
    payload = tagged(body)
    assert wire._verify_as_sent(payload, lambda node: SECRET) is None
    verdict = outcome(payload)
    assert verdict == portable(payload)
    assert verdict[0] == "rejected" or text.lstrip("-").isdigit()  # a big int is an int to json


keys = st.one_of(st.text(chars, max_size=4), st.integers(-3, 3), st.booleans(), st.none(), st.floats(0, 1))
objects = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.tuples(inner, inner),
                                                        st.dictionaries(keys, inner, max_size=4)), max_leaves=12)


def canonical_outcome(obj):
    try:
        return wire.canonical(obj)
    except wire.WireError as e:
        return e.reason


@settings(max_examples=400, deadline=None)
@given(obj=objects)
def test_canonical_of_any_object_is_the_portable_one(obj):
    # What encode() signs: the fast path must give the portable bytes, or the portable error.
    assert canonical_outcome(obj) == portable(obj, canonical_outcome)


@pytest.mark.parametrize("text", ["\x7f", "\n", "\x00", "\u00e9", "\u2603", "\U0001f600"])
@pytest.mark.parametrize("ensure_ascii", [True, False])
def test_a_string_that_is_not_printable_ascii_is_refused_under_an_authentic_tag(text, ensure_ascii):
    msg = {"v": 1, "t": "status", "node": "n1", "boot": 7, "online": True, "x": "a" + text}
    body = json.dumps(msg, sort_keys=True, separators=(",", ":"), ensure_ascii=ensure_ascii).encode()
    payload = tagged(body)
    assert wire._verify_as_sent(payload, lambda node: SECRET) is None
    assert outcome(payload) == portable(payload) == ("rejected", "bad_string")


@pytest.mark.parametrize("key", [b"", b"k" * 20, b"k" * 64, b"k" * 65, bytes(range(32))])
def test_every_hmac_implementation_agrees_with_the_stdlib(key):
    data = b"x" * 530
    expected = hmac.new(key, data, "sha256").digest()
    assert wire._hmac_sha256(key, data) == expected  # MicroPython's, by hand
    assert wire.hmac_sha256(key, data) == wire.hmac_sha256(key, data + b"") == expected  # the second from the cache
