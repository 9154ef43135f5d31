"""Canonical JSON encoding, hashing and domain-separated signing bytes (LEDGER.md §1)."""
import hashlib
import json
import re

MAX_INT = 2**63 - 1
_HEX = re.compile(r"[0-9a-f]*")
_dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode


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
    return _dumps(value).encode()


def encode_unchecked(value) -> bytes:
    """`encode` for a value already known to be ledger JSON (decoded, or built by the core):
    the same bytes without the Python type walk, which costs more than the encoding itself."""
    return _dumps(value).encode()


def _no_float(text: str):
    raise CodecError("malformed", "float")


# made once: json.loads with hooks builds a decoder per call, which costs as much as a small parse
_decoder = json.JSONDecoder(parse_float=_no_float, parse_constant=_no_float)


def loads(data: bytes, max_bytes: int):
    """Parse `data` as JSON without floats. The caller must still check that `data` is the
    canonical encoding of the value (as `decode` does)."""
    if len(data) > max_bytes:
        raise CodecError("oversized", f"{len(data)} > {max_bytes} bytes")
    try:
        return _decoder.decode(data.decode())
    except (ValueError, RecursionError) as exc:       # UnicodeDecodeError included
        if isinstance(exc, CodecError):
            raise
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
