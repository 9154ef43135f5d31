"""Consensus messages and wire envelopes: build, sign, check (LEDGER.md §6.2)."""
from .codec import CodecError, decode, encode, encode_unchecked, is_hex, loads, signing_bytes
from .crypto import SigningKey, verify

PROPOSAL_DOMAIN = "gridhive/proposal/v1"
VOTE_DOMAIN = "gridhive/vote/v1"
STEP_NUMBER = {"proposal": 1, "prevote": 2, "precommit": 3}
NIL = ""
_VOTE_KEYS = {"chain_id", "type", "height", "round", "block_hash", "validator", "sig"}
_PROPOSAL_KEYS = {"chain_id", "height", "round", "pol_round", "block_hash", "proposer", "sig"}
_ENVELOPE_KEYS = {"proposal": {"kind", "proposal", "block", "pol"}, "vote": {"kind", "vote"},
                  "decision": {"kind", "block", "commit"}, "sync_request": {"kind", "height"},
                  "tx": {"kind", "tx"}, "snapshot_request": {"kind", "height"},
                  "snapshot_chunk": {"kind", "header", "commit", "index", "total", "data"}}


class MsgError(ValueError):
    """A rejected consensus message; `reason` is a §10 code."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _unsigned(msg: dict) -> dict:
    return {k: v for k, v in msg.items() if k != "sig"}


def step_of(msg: dict) -> str:
    return msg["type"] if "type" in msg else "proposal"


def signer_of(msg: dict) -> str:
    return msg["validator"] if "validator" in msg else msg["proposer"]


def sign_bytes(msg: dict) -> bytes:
    return signing_bytes(PROPOSAL_DOMAIN if "proposer" in msg else VOTE_DOMAIN, _unsigned(msg))


def make_vote(key: SigningKey, chain_id: str, vote_type: str, height: int, round_: int, block_hash: str) -> dict:
    vote = {"chain_id": chain_id, "type": vote_type, "height": height, "round": round_,
            "block_hash": block_hash, "validator": key.public_hex}
    return sign_with(key, vote)


def make_proposal(key: SigningKey, chain_id: str, height: int, round_: int, pol_round: int, block_hash: str) -> dict:
    proposal = {"chain_id": chain_id, "height": height, "round": round_, "pol_round": pol_round,
                "block_hash": block_hash, "proposer": key.public_hex}
    return sign_with(key, proposal)


def sign_with(key: SigningKey, unsigned: dict) -> dict:
    return {**unsigned, "sig": key.sign(sign_bytes(unsigned))}


def _nat(v) -> bool:
    return type(v) is int and v >= 0


def check_signed(msg, chain_id: str) -> None:
    """Schema, chain and signature of a vote or proposal; raises MsgError."""
    if type(msg) is not dict:
        raise MsgError("malformed", "not an object")
    keys = set(msg)
    if keys == _VOTE_KEYS:
        ok = (msg["type"] in ("prevote", "precommit") and (msg["block_hash"] == NIL or is_hex(msg["block_hash"], 64))
              and is_hex(msg["validator"], 64))
    elif keys == _PROPOSAL_KEYS:
        ok = type(msg["pol_round"]) is int and is_hex(msg["block_hash"], 64) and is_hex(msg["proposer"], 64)
    else:
        raise MsgError("malformed", "keys")
    if not (ok and _nat(msg["height"]) and _nat(msg["round"]) and type(msg["chain_id"]) is str):
        raise MsgError("malformed", "fields")
    if "pol_round" in msg and not -1 <= msg["pol_round"] < msg["round"]:
        raise MsgError("bad_pol_round")
    if msg["chain_id"] != chain_id:
        raise MsgError("wrong_chain")
    if not is_hex(msg["sig"], 128) or not verify(signer_of(msg), sign_bytes(msg), msg["sig"]):
        raise MsgError("bad_signature")


TX_MSG_PREFIX = b'{"kind":"tx","tx":'      # canonical JSON: a tx envelope is known by its first bytes


def parse_tx_msg(data: bytes, max_bytes: int) -> tuple[dict, bytes]:
    """A `tx` envelope: (the tx, the bytes it claims as its canonical encoding). The canonical
    check is check_tx_sized's (`raw`), which encodes the tx anyway: one encoding, not two."""
    try:
        env = loads(data, max_bytes)
    except CodecError as exc:
        raise MsgError(exc.reason) from None
    if not (data.startswith(TX_MSG_PREFIX) and type(env) is dict and set(env) == _ENVELOPE_KEYS["tx"]
            and env["kind"] == "tx"):
        raise MsgError("malformed", "envelope")
    return env["tx"], data[len(TX_MSG_PREFIX):-1]


def block_bytes(env: dict, data: bytes) -> bytes | None:
    """The canonical bytes of a `proposal`'s or `decision`'s block, cut out of `data`, the
    envelope's bytes as `parse` checked them canonical: "block" is the envelope's first key, so
    its bytes are what lies between '{"block":' and the encoding of the envelope's other keys.
    Validating, storing and hashing the block then need no other encoding of its txs."""
    head, tail = b'{"block":', b"," + encode_unchecked({k: v for k, v in env.items() if k != "block"})[1:]
    if len(data) > len(head) + len(tail) and data.startswith(head) and data.endswith(tail):
        return data[len(head):len(data) - len(tail)]
    return None


def parse(data: bytes, max_bytes: int) -> dict:
    """Decode a wire envelope and check its shape (contents are checked by their handlers)."""
    try:
        env = decode(data, max_bytes)
    except CodecError as exc:
        raise MsgError(exc.reason) from None
    if type(env) is not dict or set(env) != _ENVELOPE_KEYS.get(env.get("kind"), ()):
        raise MsgError("malformed", "envelope")
    if env["kind"] in ("sync_request", "snapshot_request") and not _nat(env["height"]):
        raise MsgError("malformed", "height")
    if env["kind"] == "snapshot_chunk" and not (
            type(env["header"]) is dict and type(env["commit"]) is list and type(env["data"]) is str
            and _nat(env["index"]) and type(env["total"]) is int and env["index"] < env["total"]):
        raise MsgError("malformed", "snapshot chunk")
    if env["kind"] == "decision" and type(env["commit"]) is not list:
        raise MsgError("malformed", "commit")
    if env["kind"] == "proposal" and type(env["pol"]) is not list:
        raise MsgError("malformed", "pol")
    return env


# Envelopes carrying a block or a tx are built only from values the core checked or built, so
# they are encoded without another type walk (a block holds thousands of txs).
def proposal_msg(proposal: dict, block: dict, pol: list[dict] = ()) -> bytes:
    """`pol`: the prevotes of `pol_round` for the block (its proof-of-lock), empty when pol_round = -1."""
    return encode_unchecked({"kind": "proposal", "proposal": proposal, "block": block, "pol": list(pol)})


def vote_msg(vote: dict) -> bytes:
    return encode({"kind": "vote", "vote": vote})


def decision_msg(block: dict, commit: list[dict]) -> bytes:
    return encode_unchecked({"kind": "decision", "block": block, "commit": commit})


def sync_request_msg(height: int) -> bytes:
    return encode({"kind": "sync_request", "height": height})


def snapshot_request_msg(height: int) -> bytes:
    """`height`: the sender's next height; a snapshot above its last final height is wanted."""
    return encode({"kind": "snapshot_request", "height": height})


def tx_msg(tx: dict, tx_bytes: bytes | None = None) -> bytes:
    """`tx_bytes`: canonical(tx), if at hand."""
    return TX_MSG_PREFIX + (tx_bytes or encode_unchecked(tx)) + b"}"
