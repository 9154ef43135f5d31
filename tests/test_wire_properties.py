"""Property test: on CPython, ghnode.wire's C fast path (json.JSONDecoder/JSONEncoder) gives the same
verdict, message and canonical bytes as the portable path MicroPython runs, for any payload, and
the same canonical bytes (or error) for any object a sender passes to encode().

The portable path is the same module with the fast path switched off (`_DECODER = _ENCODER = None`).
Payloads are signed messages with a random extra field — ints, strings of printable ASCII, quotes,
backslashes, control, DEL and non-ASCII characters, floats, NaN/Infinity, lists, objects — written
with random key order, spacing and escaping, sometimes with a wrong tag.
"""
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


def portable(payload, fn=None):
    saved = wire._DECODER, wire._ENCODER
    wire._DECODER = wire._ENCODER = None
    try:
        return (fn or outcome)(payload)
    finally:
        wire._DECODER, wire._ENCODER = saved


def outcome(payload):
    try:
        msg, body = wire.verify(payload, lambda node: SECRET if node == "n1" else None)
    except wire.WireError as e:
        return ("rejected", e.reason)
    return ("accepted", json.dumps(msg, sort_keys=True), body)


@settings(max_examples=400, deadline=None)
@given(extra=values, order=st.randoms(use_true_random=False), ensure_ascii=st.booleans(), spaced=st.booleans(),
       forged=st.booleans())
def test_fast_path_agrees_with_the_portable_path(extra, order, ensure_ascii, spaced, forged):
    msg = {"v": 1, "t": "tele", "node": "n1", "boot": 7, "seq": 3, "ts_ms": 1_700_000_000_000, "synced": True,
           "ch": [{"n": 0, "power_w": 5}], "relays": [], "x": extra}
    # The tag over what the portable canonical form would be; a float or bad string makes it
    # refuse to sign, so sign the fault-free skeleton then (the payload is refused either way).
    try:
        tag = wire.hmac_sha256(OTHER if forged else SECRET, wire.canonical(msg)).hex()
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
            assert fast == ("rejected", found.pop())
        else:
            assert fast[0] == ("rejected" if forged else "accepted")



@pytest.mark.parametrize("text", ["NaN", "-Infinity", "1e400", "1.0", "-0.0"])
def test_every_float_spelling_is_refused_on_both_paths(text):
    msg = {"v": 1, "t": "status", "node": "n1", "boot": 7, "online": True}
    payload = wire.encode(msg, SECRET)[:-1] + b',"x":' + text.encode() + b"}"
    assert outcome(payload) == portable(payload) == ("rejected", "bad_type")


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
