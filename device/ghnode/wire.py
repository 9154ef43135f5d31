"""The node<->gateway wire format, defined once. Runs unchanged on MicroPython and CPython.

A message is a JSON object of ints, ASCII strings, bools, None, lists and objects (no floats: their
text differs between interpreters, so values use integer units such as `power_w`, `irms_ma`).
Its tag is HMAC-SHA256, keyed with the node's 32-byte secret, over the message's canonical bytes:
sorted keys, no spaces. The tag travels as the `mac` field, which is not part of the canonical bytes,
so a receiver re-derives them from the parsed object and need not trust the sender's layout.
docs/PROTOCOL.md lists the topics and every message type's fields.
"""
import hashlib
import json
from binascii import hexlify, unhexlify

try:  # CPython (C) and MicroPython builds that include micropython-lib's hmac
    import hmac as _hmac
except ImportError:  # the ESP32 firmware has none: _hmac_sha256 below does RFC 2104 by hand
    _hmac = None
# str.isprintable() exists on CPython only; MicroPython checks character by character.
_FAST_ASCII = hasattr(str, "isprintable") and hasattr(str, "isascii")


class _NotInt:
    """A float, NaN or Infinity as CPython's C parser hands it over: a value that fails every
    integer check and that the canonical form refuses (bad_type), as a float does on MicroPython."""

    def __init__(self, text):
        self.text = text

    def __repr__(self):
        return self.text


def _refuse(value):
    raise WireError("bad_type", "float values are not allowed (use integer units)")


try:  # CPython with orjson (the gateway): a payload laid out as encode() writes it is checked
    # against its own bytes, without serialising it again (see _verify_as_sent).
    import orjson as _orjson
except ImportError:  # MicroPython, or CPython without orjson
    _orjson = None

try:  # CPython: the C json codec parses and re-serialises a received message (see canonical_parsed)
    _DECODER = json.JSONDecoder(parse_float=_NotInt, parse_constant=_NotInt)
    _ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), check_circular=False, default=_refuse)
except AttributeError:  # MicroPython's json has loads() and dumps() only
    _DECODER = _ENCODER = None

VERSION = 1
TOPIC_ROOT = "gh"
MAX_PAYLOAD_BYTES = 4096

# Node -> gateway: telemetry, health, status (retained birth / last will), relay command results,
# events. Gateway -> node: acknowledgements of stored messages, relay commands.
UP_KINDS = ("tele", "health", "status", "reply", "evt")
DOWN_KINDS = ("ack", "cmd")

# Fields every message has, and the type each one must have.
_COMMON = (("v", int), ("t", str), ("node", str))
# Node-originated messages also carry their origin and order: boot id, sequence, timestamp.
_ORIGIN = (("boot", int), ("seq", int), ("ts_ms", int), ("synced", bool))
_SCHEMA = {
    "tele": _ORIGIN + (("ch", list), ("relays", list)),
    "health": _ORIGIN + (("heap_free_b", int), ("uptime_s", int), ("reset_cause", str),
                         ("buf_depth", int), ("buf_dropped", int), ("fw", str), ("safe_mode", bool)),
    "status": (("boot", int), ("online", bool)),
    "reply": _ORIGIN + (("cid", int), ("ok", bool), ("relay", int), ("state", str)),
    "evt": _ORIGIN + (("kind", str),),
    "ack": (("boot", int), ("acks", list)),
    "cmd": (("boot", int), ("cid", int), ("relay", int), ("action", str)),
}
# Messages that go into the node's flash buffer and need the gateway's acknowledgement.
ACKED_KINDS = ("tele", "health", "reply", "evt")


class WireError(ValueError):
    """A payload that is not a valid message. `reason` is a short code the gateway counts by."""

    def __init__(self, reason, detail=""):
        super().__init__(reason + (": " + detail if detail else ""))
        self.reason = reason


def topic(node_id, kind):
    return "%s/%s/%s" % (TOPIC_ROOT, node_id, kind)


def parse_topic(name):
    """'gh/<node>/<kind>' -> (node, kind), or None for any other topic."""
    parts = name.split("/")
    if len(parts) != 3 or parts[0] != TOPIC_ROOT or not parts[1]:
        return None
    return parts[1], parts[2]


# --- canonical bytes ---------------------------------------------------------------------------

def _canon_str(s, out):
    if _FAST_ASCII:
        if not (s.isascii() and s.isprintable()):
            raise WireError("bad_string", "only printable ASCII is allowed")
    else:
        for ch in s:
            o = ord(ch)
            if o < 0x20 or o > 0x7E:
                raise WireError("bad_string", "only printable ASCII is allowed")
    out.append('"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"')


def _canon(obj, out):
    # bool before int: True is an int in Python.
    if obj is True:
        out.append("true")
    elif obj is False:
        out.append("false")
    elif obj is None:
        out.append("null")
    elif isinstance(obj, int):
        out.append(str(obj))
    elif isinstance(obj, str):
        _canon_str(obj, out)
    elif isinstance(obj, (list, tuple)):
        out.append("[")
        for i, item in enumerate(obj):
            if i:
                out.append(",")
            _canon(item, out)
        out.append("]")
    elif isinstance(obj, dict):
        out.append("{")
        for key in obj:  # before sorting: mixed key types cannot be sorted
            if not isinstance(key, str):
                raise WireError("bad_key", "object keys must be strings")
        for i, key in enumerate(sorted(obj)):
            if i:
                out.append(",")
            _canon_str(key, out)
            out.append(":")
            _canon(obj[key], out)
        out.append("}")
    else:
        raise WireError("bad_type", "%s values are not allowed (use integer units)" % type(obj).__name__)


def canonical(obj):
    """The canonical bytes of a message (without its `mac`)."""
    if _ENCODER is not None:
        # CPython: the C encoder's text, trusted when parsing it gives obj back. A float, a
        # non-string key or a tuple comes back different, and the portable path below decides.
        try:
            text = _c_text(obj)
        except (TypeError, ValueError):
            text = None
        if text is not None and _DECODER.decode(text) == obj:
            return text.encode()
    out = []
    _canon(obj, out)
    return "".join(out).encode()


def parse(payload):
    """The value of a JSON text (bytes or str), floats, NaN and Infinity as values the canonical
    form refuses; ValueError (or UnicodeError) for anything that is not JSON."""
    if _DECODER is None:
        return json.loads(payload)
    return _DECODER.decode(payload if isinstance(payload, str) else payload.decode())


def canonical_parsed(obj):
    """canonical() of a value parse() returned, for half its cost on CPython: such a value has
    only string keys and no floats, so the C encoder's text needs no reading back."""
    if _ENCODER is None:
        return canonical(obj)
    text = _c_text(obj)
    if text is None:
        raise WireError("bad_string", "only printable ASCII is allowed")
    return text.encode()


def _c_text(obj):
    """CPython's C encoder with sorted keys and ASCII escapes: the canonical form, or None when a
    string is not printable ASCII. Any such character comes out as a backslash escape other than
    \\" and \\\\, which C string methods find."""
    text = _ENCODER.encode(obj)
    return None if _other_escape(text) else text


def _other_escape(text):
    """Whether `text` holds a backslash escape other than \\" and \\\\ (a character that is
    not printable ASCII, in a text a JSON encoder wrote)."""
    return "\\" in text and "\\" in text.replace("\\\\", "").replace('\\"', "")


# --- HMAC-SHA256 (RFC 2104); MicroPython has hashlib.sha256 but no hmac module ---------------

_BLOCK = 64
_compare_digest = getattr(_hmac, "compare_digest", None)


_KEYED = {}  # secret -> its _pads(), where hash states can be copied (CPython)
_KEYED_MAX = 65536  # a registry's worth of nodes; more distinct secrets only start it over
_COPYABLE = hasattr(hashlib.sha256(), "copy")  # MicroPython's hash objects cannot be copied


def hmac_sha256(key, data):
    if _COPYABLE:
        # Each key's padded blocks hashed once: 0.9 us for a 600-byte message where hmac, which
        # sets the key up every time, takes 2.2 (a gateway verifies every message it receives).
        pads = _KEYED.get(bytes(key))
        if pads is None:
            if len(_KEYED) >= _KEYED_MAX:
                _KEYED.clear()
            pads = _KEYED[bytes(key)] = _pads(key)
        inner, outer = pads[0].copy(), pads[1].copy()
        inner.update(data)
        outer.update(inner.digest())
        return outer.digest()
    if _hmac is not None:
        return _hmac.new(key, data, hashlib.sha256).digest()
    return _hmac_sha256(key, data)


def _hmac_sha256(key, data):
    inner, outer = _pads(key)
    inner.update(data)
    outer.update(inner.digest())
    return outer.digest()


def _pads(key):
    """The inner and outer SHA-256 states after hashing the key's padded block."""
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key + bytes(_BLOCK - len(key))
    return hashlib.sha256(bytes(b ^ 0x36 for b in key)), hashlib.sha256(bytes(b ^ 0x5C for b in key))


def _same(a, b):
    # Constant-time comparison so a forger learns nothing from timing (hmac.compare_digest where
    # the interpreter has it).
    if _compare_digest is not None:
        return _compare_digest(a, b)
    if len(a) != len(b):
        return False
    diff = 0
    for x, y in zip(a, b):
        diff |= x ^ y
    return diff == 0


# --- encode / decode -----------------------------------------------------------------------------

def encode(msg, secret):
    """Tagged payload bytes for `msg` (a dict without `mac`)."""
    body = canonical(msg)
    tag = hexlify(hmac_sha256(secret, body))
    return body[:-1] + b',"mac":"' + tag + b'"}'


def check_schema(msg):
    """Raise WireError unless `msg` has the common fields and its type's fields with the right types."""
    if not isinstance(msg, dict):
        raise WireError("not_object")
    _check_fields(msg, _COMMON)
    if msg["v"] != VERSION:
        raise WireError("bad_version", "got %r, this build speaks %d" % (msg["v"], VERSION))
    fields = _SCHEMA.get(msg["t"])
    if fields is None:
        raise WireError("bad_kind", repr(msg["t"]))
    _check_fields(msg, fields)
    if ("seq", int) in fields and msg["seq"] < 0:
        raise WireError("bad_field", "seq must be >= 0")


def _check_fields(msg, fields):
    # A parsed message holds exact types, so the type itself is compared: true/false (bool is a
    # subclass of int) and the parser's stand-in for a float fail an int field, as they must.
    for name, kind in fields:
        if type(msg.get(name)) is not kind:
            if name not in msg:
                raise WireError("missing_field", name)
            raise WireError("bad_field", "%s must be %s" % (name, kind.__name__))


def decode(payload, secret_for):
    """Parse and verify a payload. `secret_for(node_id)` returns that node's secret or None.

    Returns the message dict without `mac`; raises WireError with a countable reason.
    """
    return verify(payload, secret_for)[0]


def verify(payload, secret_for):
    """decode() that also returns the canonical bytes the tag covers: a receiver that stores or
    forwards the message can use them instead of serialising it again."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise WireError("too_large", "%d bytes" % len(payload))
    if _orjson is not None:
        verified = _verify_as_sent(payload, secret_for)
        if verified is not None:
            return verified
    try:
        msg = parse(payload)
    except (ValueError, UnicodeError):
        raise WireError("not_json")
    if not isinstance(msg, dict):
        raise WireError("not_object")
    tag = msg.pop("mac", None)
    if not isinstance(tag, str) or len(tag) != 64:
        raise WireError("missing_mac")
    check_schema(msg)
    secret = secret_for(msg["node"])
    if secret is None:
        raise WireError("unknown_node", msg["node"])
    try:
        expected = unhexlify(tag)
    except ValueError:
        raise WireError("bad_mac", "not hex")
    body = canonical_parsed(msg)
    if not _same(hmac_sha256(secret, body), expected):
        raise WireError("bad_mac")
    return msg, body


_MAC_TAIL = len(',"mac":"') + 64 + len('"}')


def _verify_as_sent(payload, secret_for):
    """(msg, body) when `payload` is canonical bytes with the tag appended as encode() writes it
    and the tag is right; None sends it down the full path, which gives the reason if it is bad.

    It accepts only what the full path accepts: the body must be exactly orjson's sorted, compact
    text of what it parses to (one spelling per value, no duplicate keys), printable ASCII
    (orjson writes other characters raw or as escapes), without floats, and without a `mac` key.
    orjson parses floats, and ints beyond 64 bits as floats; it writes every float with a "." or
    an exponent with its sign ("1e+20", "5e-324"). So a body that is orjson's text and has none of
    ".", "e+", "e-" has no float (a string that has them only sends it down the full path).
    """
    if payload[-_MAC_TAIL:-_MAC_TAIL + 8] != b',"mac":"' or payload[-2:] != b'"}':
        return None
    body = bytes(payload[:-_MAC_TAIL]) + b"}"
    if not body.isascii() or b"\x7f" in body or b"." in body or b"e+" in body or b"e-" in body:
        return None
    try:
        msg = _orjson.loads(body)
        if type(msg) is not dict or "mac" in msg or _orjson.dumps(msg, option=_orjson.OPT_SORT_KEYS) != body:
            return None
    except (ValueError, TypeError):  # orjson.JSONDecodeError / JSONEncodeError
        return None
    if _other_escape(body.decode()):
        return None
    try:
        check_schema(msg)
    except WireError:
        return None
    secret = secret_for(msg["node"])
    if secret is None:
        return None
    try:
        expected = unhexlify(payload[-66:-2])
    except ValueError:
        return None
    if not _same(hmac_sha256(secret, body), expected):
        return None
    return msg, body
