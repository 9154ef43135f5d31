"""Canonical JSON encoding, hashing and domain-separated signing bytes (LEDGER.md §1)."""
import hashlib
import json
import re

import orjson

MAX_INT = 2**63 - 1
_HEX = re.compile(r"[0-9a-f]*")
_json_dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode


def _dumps(value) -> bytes:
    """The canonical bytes (§1.1), from orjson where its output is them: a tenth of json's time,
    which every validator pays several times per tx. orjson writes non-ASCII characters and DEL
    raw where §1.1 escapes them, and refuses ints beyond 64 bits; those values take json's path."""
    try:
        out = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:                        # orjson.JSONEncodeError
        return _json_dumps(value).encode()
    return out if out.isascii() and b"\x7f" not in out else _json_dumps(value).encode()


class CodecError(ValueError):
    """Bytes or a value that is not canonical ledger JSON; `reason` is a §10 code."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _check(value, depth: int = 0) -> None:
    if depth > 32:
        raise CodecError("malformed", "nested too deep")
    kind = type(value)
    if kind is int:
        if -MAX_INT <= value <= MAX_INT:
            return
        raise CodecError("malformed", "integer out of range")
    if kind is str or value is None:
        return
    if kind is list:
        for item in value:
            _check(item, depth + 1)
        return
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise CodecError("malformed", "non-string key")
            _check(item, depth + 1)
        return
    raise CodecError("malformed", f"type {kind.__name__} not allowed")  # floats and bools included


def encode(value) -> bytes:
    """The one canonical encoding of `value` (sorted keys, compact, ASCII)."""
    _check(value)
    return _dumps(value)


def encode_unchecked(value) -> bytes:
    """`encode` for a value already known to be ledger JSON (decoded, or built by the core):
    the same bytes without the Python type walk, which costs more than the encoding itself."""
    return _dumps(value)


def loads(data: bytes, max_bytes: int):
    """Parse `data` as JSON. Floats parse too (orjson has no hook to refuse them): the caller
    must still check that `data` is the canonical encoding of a ledger value, as `decode` does
    (its type walk refuses floats) or the tx schema (every value's type is checked)."""
    if len(data) > max_bytes:
        raise CodecError("oversized", f"{len(data)} > {max_bytes} bytes")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:       # invalid UTF-8, lone surrogates and ints beyond 64 bits too
        raise CodecError("malformed", "not JSON") from None


def decode(data: bytes, max_bytes: int):
    """Parse `data`, accepting only values whose canonical encoding is exactly `data`."""
    value = loads(data, max_bytes)
    if encode(value) != data:
        raise CodecError("malformed", "not canonical")
    return value


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hash_value(value) -> str:
    return digest(encode(value))


def signing_bytes(domain: str, value) -> bytes:
    """Domain-separated bytes so a signature of one kind never verifies as another (§1.2)."""
    return domain.encode() + b"\n" + encode(value)


def is_hex(value, n_chars: int) -> bool:
    return type(value) is str and len(value) == n_chars and _HEX.fullmatch(value) is not None
