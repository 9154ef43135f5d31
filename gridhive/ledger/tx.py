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


def _any_dict(v) -> bool:
    return type(v) is dict


def _cert(v) -> bool:
    return (type(v) is dict and set(v) == {"chain_id", "household", "key", "gateway", "role"}
            and type(v["chain_id"]) is str and is_household(v["household"]) and _pubkey(v["key"])
            and _pubkey(v["gateway"]) and v["role"] in ("prosumer", "consumer"))


SCHEMAS = {
    "admit": {"cert": _cert, "cert_sig": lambda v: is_hex(v, 128)},
    "validator_vote": {"action": lambda v: v in ("add", "remove"), "validator": _pubkey, "power": _nat},
    "reading": {"household": is_household, "interval_start_s": _nat, "import_wh": _nat, "export_wh": _nat},
    "order": {"interval_start_s": _nat, "side": lambda v: v in ("buy", "sell"), "energy_wh": _pos,
              "price_minor_per_kwh": _nat},
    "clearing": {"interval_start_s": _nat, "result": _any_dict},
    "settlement": {"interval_start_s": _nat, "result": _any_dict},
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


def check_tx_sized(tx, chain_id: str, max_tx_bytes: int, decoded: bool = False) -> tuple[str, int]:
    """check_tx, also returning the canonical size. `decoded`: the tx came out of `decode`, so its
    values are known to be ledger JSON and the type walk is skipped. The signed bytes are encoded
    once and serve the size, the signature and the id."""
    if type(tx) is not dict or set(tx) != _ENVELOPE_KEYS or type(tx["sig"]) is not str:
        raise TxError("malformed", "envelope keys")
    try:
        payload = TX_DOMAIN.encode() + b"\n" + (encode_unchecked if decoded else encode)(unsigned(tx))
    except CodecError as exc:
        raise TxError("malformed", str(exc)) from None
    # canonical(tx) is canonical(unsigned) with `"sig":<sig>,` inserted: 7 bytes plus the quoted sig
    size = len(payload) - len(TX_DOMAIN) - 1 + 7 + len(encode_unchecked(tx["sig"]))
    if size > max_tx_bytes:
        raise TxError("oversized", f"> {max_tx_bytes} bytes")
    schema = SCHEMAS.get(tx["type"])
    body = tx["body"]
    if (schema is None or not _pubkey(tx["sender"]) or not _nat(tx["nonce"]) or type(body) is not dict
            or set(body) != set(schema) or not all(check(body[k]) for k, check in schema.items())):
        raise TxError("malformed", f"{tx.get('type')!r} schema")
    if tx["chain_id"] != chain_id:
        raise TxError("wrong_chain", str(tx["chain_id"])[:64])
    if not is_hex(tx["sig"], 128) or not verify(tx["sender"], payload, tx["sig"]):
        raise TxError("bad_signature")
    return digest(payload), size


def make_cert(operator: SigningKey, chain_id: str, household: str, key: str, gateway: str,
              role: str = "prosumer") -> dict:
    """An admission body: the operator's certificate binding `household` to `key` (§3.3 admit)."""
    cert = {"chain_id": chain_id, "household": household, "key": key, "gateway": gateway, "role": role}
    return {"cert": cert, "cert_sig": operator.sign(signing_bytes(CERT_DOMAIN, cert))}


def cert_valid(body: dict, operator_hex: str) -> bool:
    return verify(operator_hex, signing_bytes(CERT_DOMAIN, body["cert"]), body["cert_sig"])
