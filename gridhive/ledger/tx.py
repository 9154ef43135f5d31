"""Transaction envelope, per-type body schemas and stateless checks (LEDGER.md §3.1, §3.3)."""
import re

from .codec import MAX_INT, CodecError, digest, encode, encode_unchecked, is_hex, signing_bytes
from .crypto import SigningKey, verify

TX_DOMAIN = "gridhive/tx/v1"
CERT_DOMAIN = "gridhive/cert/v1"
_HOUSEHOLD = re.compile(r"[a-z0-9_-]{1,64}")
_ENVELOPE_KEYS = {"chain_id", "type", "sender", "nonce", "body", "sig"}


class TxError(ValueError):
    """A rejected transaction; `reason` is a §10 code."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _nat(v) -> bool:
    return type(v) is int and 0 <= v <= MAX_INT


def _pos(v) -> bool:
    return type(v) is int and 1 <= v <= MAX_INT


def _pubkey(v) -> bool:
    return is_hex(v, 64)


def is_household(v) -> bool:
    return type(v) is str and _HOUSEHOLD.fullmatch(v) is not None


def _hash(v) -> bool:
    return is_hex(v, 64)


# Where the DSO places a member, optional in its certificate: its feeder (an id like a
# household's) and its connection point's limits in W.
_NETWORK_FIELDS = {"feeder": is_household, "max_import_w": _nat, "max_export_w": _nat}
_CERT_KEYS = {"chain_id", "household", "key", "gateway", "role"}


def network_fields_ok(record: dict, required: set) -> bool:
    """`record` has the `required` keys and, besides them, only valid optional network fields."""
    keys = set(record)
    return required <= keys and all(k in _NETWORK_FIELDS and _NETWORK_FIELDS[k](record[k]) for k in keys - required)


def _cert(v) -> bool:
    return (type(v) is dict and network_fields_ok(v, _CERT_KEYS)
            and type(v["chain_id"]) is str and is_household(v["household"]) and _pubkey(v["key"])
            and _pubkey(v["gateway"]) and v["role"] in ("prosumer", "consumer"))


SCHEMAS = {
    "admit": {"cert": _cert, "cert_sig": lambda v: is_hex(v, 128)},
    "validator_vote": {"action": lambda v: v in ("add", "remove"), "validator": _pubkey, "power": _nat},
    "reading": {"household": is_household, "interval_start_s": _nat, "import_wh": _nat, "export_wh": _nat},
    "order": {"interval_start_s": _nat, "side": lambda v: v in ("buy", "sell"), "energy_wh": _pos,
              "price_minor_per_kwh": _nat},
    "clearing": {"interval_start_s": _nat, "result_hash": _hash},
    "settlement": {"interval_start_s": _nat, "result_hash": _hash},
    "transfer": {"to": _pubkey, "amount_minor": _pos},
}


def unsigned(tx: dict) -> dict:
    return {k: v for k, v in tx.items() if k != "sig"}


def tx_id(tx: dict) -> str:
    """The id of a well-formed transaction."""
    return digest(TX_DOMAIN.encode() + b"\n" + encode_unchecked(unsigned(tx)))


def make_tx(key: SigningKey, chain_id: str, tx_type: str, nonce: int, body: dict) -> dict:
    tx = {"chain_id": chain_id, "type": tx_type, "sender": key.public_hex, "nonce": nonce, "body": body}
    tx["sig"] = key.sign(signing_bytes(TX_DOMAIN, tx))
    return tx


def check_tx(tx, chain_id: str, max_tx_bytes: int) -> str:
    """Stateless well-formedness (§3.1); returns the tx id or raises TxError."""
    return check_tx_sized(tx, chain_id, max_tx_bytes)[0]


def check_tx_sized(tx, chain_id: str, max_tx_bytes: int, decoded: bool = False,
                   raw: bytes | None = None) -> tuple[str, int, bytes]:
    """check_tx, also returning the canonical size and bytes. `decoded`: the tx came out of
    `decode`, so its values are known to be ledger JSON and the type walk is skipped. `raw`: the
    bytes it came in as, which must be its canonical encoding (§1.1); they are compared with the
    encoding made here, so a gossiped tx is encoded once, not again to check its bytes. That one
    encoding of the signed part serves the size, the bytes, the signature and the id.
    With `raw` the type walk is skipped too: the envelope and schema checks below test the type
    of every value (a float, a bool or an out-of-range int fails them), so the walk would only
    repeat them."""
    if type(tx) is not dict or set(tx) != _ENVELOPE_KEYS or type(tx["sig"]) is not str:
        raise TxError("malformed", "envelope keys")
    try:
        unsigned_bytes = (encode_unchecked if decoded or raw is not None else encode)(unsigned(tx))
    except CodecError as exc:
        raise TxError("malformed", str(exc)) from None
    # canonical(tx) is canonical(unsigned) with `,"sig":<sig>` before its last key, "type"
    cut = len(unsigned_bytes) - len(b',"type":}') - len(encode_unchecked(tx["type"]))
    tx_bytes = unsigned_bytes[:cut] + b',"sig":' + encode_unchecked(tx["sig"]) + unsigned_bytes[cut:]
    if len(tx_bytes) > max_tx_bytes:
        raise TxError("oversized", f"> {max_tx_bytes} bytes")
    if raw is not None and raw != tx_bytes:
        raise TxError("malformed", "not canonical")
    schema = SCHEMAS.get(tx["type"])
    body = tx["body"]
    if (schema is None or not _pubkey(tx["sender"]) or not _nat(tx["nonce"]) or type(body) is not dict
            or set(body) != set(schema) or not all(check(body[k]) for k, check in schema.items())):
        raise TxError("malformed", f"{tx.get('type')!r} schema")
    if tx["chain_id"] != chain_id:
        raise TxError("wrong_chain", str(tx["chain_id"])[:64])
    payload = TX_DOMAIN.encode() + b"\n" + unsigned_bytes
    if not is_hex(tx["sig"], 128) or not verify(tx["sender"], payload, tx["sig"]):
        raise TxError("bad_signature")
    return digest(payload), len(tx_bytes), tx_bytes


def make_cert(operator: SigningKey, chain_id: str, household: str, key: str, gateway: str,
              role: str = "prosumer", **network) -> dict:
    """An admission body: the operator's certificate binding `household` to `key` (§3.3 admit).
    `network`: optional feeder, max_import_w, max_export_w (None = not given)."""
    cert = {"chain_id": chain_id, "household": household, "key": key, "gateway": gateway, "role": role,
            **{k: v for k, v in network.items() if v is not None}}
    return {"cert": cert, "cert_sig": operator.sign(signing_bytes(CERT_DOMAIN, cert))}


def cert_valid(body: dict, operator_hex: str) -> bool:
    return verify(operator_hex, signing_bytes(CERT_DOMAIN, body["cert"]), body["cert_sig"])
