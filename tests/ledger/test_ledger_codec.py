"""LEDGER.md §1 (encoding, hashing, signatures) and §3.1 (transaction envelope)."""
import json

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gridhive.ledger.codec import MAX_INT, CodecError, decode, digest, encode, encode_unchecked, hash_value, signing_bytes
from gridhive.ledger.crypto import SigningKey, verify
from gridhive.ledger.tx import TX_DOMAIN, TxError, check_tx, make_tx, tx_id

CHAIN = "c1"


def test_canonical_encoding_is_sorted_compact_ascii():
    assert encode({"b": 1, "a": [None, "é"]}) == b'{"a":[null,"\\u00e9"],"b":1}'


_ledger_values = st.recursive(
    st.none() | st.integers(-MAX_INT, MAX_INT) | st.integers(-2**80, 2**80) | st.text()
    | st.text(alphabet=st.characters(max_codepoint=0x7f))
    | st.text(alphabet=st.sampled_from("\x00\x1f\x7f\\\"/é\u2028\U0001f600a")),  # what escapes differ on
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=500)
@given(_ledger_values)
@example("\x7f")
@example({"é": [2**64]})
def test_fast_encoder_writes_exactly_the_spec_bytes(value):
    """§1.1 defines the bytes by json.dumps; the codec writes them with orjson where that gives
    the same bytes (ASCII output without DEL, ints within 64 bits) and with json otherwise."""
    spec = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    assert encode_unchecked(value) == spec
    if _is_ledger_value(value):                    # ints within 63 bits, at most 32 deep
        assert decode(spec, 1 << 20) == value


def _is_ledger_value(value) -> bool:
    try:
        encode(value)
        return True
    except CodecError:
        return False


@pytest.mark.parametrize("value", [1.5, True, {1: 2}, b"x", 2**63, {"a": (1, 2)}])
def test_encoding_refuses_floats_bools_and_foreign_types(value):
    with pytest.raises(CodecError):
        encode(value)


@pytest.mark.parametrize("data", [b'{"a": 1}', b'{"b":1,"a":2}', b'{"a":1,"a":2}', b'{"a":1.0}',
                                  b'{"a":true}', b'{"a":"\\u0041"}', b'NaN', b'{"a":1e3}', b'\xff',
                                  b'"\\ud800"'])
def test_decoder_accepts_only_the_one_canonical_form(data):
    with pytest.raises(CodecError) as exc:
        decode(data, 1000)
    assert exc.value.reason == "malformed"


def test_decoder_limits_size():
    with pytest.raises(CodecError) as exc:
        decode(encode({"a": "x" * 100}), 50)
    assert exc.value.reason == "oversized"
    assert decode(encode({"a": "x"}), 50) == {"a": "x"}


def test_signatures_are_domain_separated():
    key = SigningKey.derive("k")
    sig = key.sign(signing_bytes("gridhive/vote/v1", {"x": 1}))
    assert verify(key.public_hex, signing_bytes("gridhive/vote/v1", {"x": 1}), sig)
    assert not verify(key.public_hex, signing_bytes("gridhive/proposal/v1", {"x": 1}), sig)
    assert not verify(key.public_hex, signing_bytes("gridhive/vote/v1", {"x": 2}), sig)
    assert not verify("zz" * 32, b"", sig)
    assert len(hash_value({"x": 1})) == 64


def test_keys_are_deterministic_from_seed():
    a, b = SigningKey.derive("same"), SigningKey.derive("same")
    assert a.public_hex == b.public_hex and SigningKey.from_seed(a.seed()).public_hex == a.public_hex


def test_well_formed_tx_passes_and_its_id_ignores_nothing_but_the_signature():
    key = SigningKey.derive("sender")
    tx = make_tx(key, CHAIN, "transfer", 0, {"to": "ab" * 32, "amount_minor": 5})
    assert check_tx(tx, CHAIN, 4096) == tx_id(tx)
    assert tx_id({**tx, "nonce": 1}) != tx_id(tx)
    assert tx_id(tx) == digest(signing_bytes(TX_DOMAIN, {k: v for k, v in tx.items() if k != "sig"}))


@pytest.mark.parametrize("mutate, reason", [
    (lambda t: {**t, "nonce": t["nonce"] + 1}, "bad_signature"),                    # forged
    (lambda t: {**t, "chain_id": "other"}, "wrong_chain"),                          # other chain
    (lambda t: {**t, "body": {**t["body"], "extra": 1}}, "malformed"),              # schema
    (lambda t: {**t, "body": {**t["body"], "amount_minor": 0}}, "malformed"),       # range
    (lambda t: {**t, "body": {**t["body"], "amount_minor": True}}, "malformed"),    # bool is not int
    (lambda t: {**t, "type": "mint"}, "malformed"),                                 # unknown type
    (lambda t: {k: v for k, v in t.items() if k != "sig"}, "malformed"),            # missing key
    (lambda t: {**t, "sig": "00" * 64}, "bad_signature"),
])
def test_bad_txs_are_rejected_with_a_reason(mutate, reason):
    tx = make_tx(SigningKey.derive("sender"), CHAIN, "transfer", 0, {"to": "ab" * 32, "amount_minor": 5})
    with pytest.raises(TxError) as exc:
        check_tx(mutate(tx), CHAIN, 4096)
    assert exc.value.reason == reason


def test_oversized_tx_rejected():
    tx = make_tx(SigningKey.derive("s"), CHAIN, "clearing", 0, {"interval_start_s": 0, "result": {"x": "y" * 500}})
    with pytest.raises(TxError) as exc:
        check_tx(tx, CHAIN, 300)
    assert exc.value.reason == "oversized"


@pytest.mark.parametrize("data, ok", [
    (b'{"a":"true [[[{ false \\" ]"}', True),            # look-alikes inside strings are just text
    (b'[1,{"a":false}]', False),
    (b"9223372036854775807", True), (b"-9223372036854775807", True),
    (b"9223372036854775808", False), (b"-9223372036854775808", False),
    (b"[" * 32 + b"1" + b"]" * 32, True),                # nesting limit (§1.1): 32 deep
    (b"[" * 33 + b"1" + b"]" * 33, False),
])
def test_decoder_type_rules_hold_exactly_whatever_strings_contain(data, ok):
    """Bools, integer range and nesting are checked on values, never confused by string contents."""
    if ok:
        assert encode(decode(data, 1000)) == data
    else:
        with pytest.raises(CodecError):
            decode(data, 1000)
