"""Validator links (LEDGER.md §13): length-prefixed frames, a handshake in which both sides sign
the chain id and both fresh ephemeral keys with their validator key, then every frame sealed with
ChaCha20-Poly1305 under keys only the two authenticated ends hold, numbered against replay."""
import asyncio
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .codec import CodecError, decode, encode, is_hex, signing_bytes
from .crypto import SigningKey, verify

PROTOCOL = "gridhive/p2p/v1"
HANDSHAKE_DOMAIN = "gridhive/handshake/v1"
MAX_HANDSHAKE_BYTES = 1_024
_SEAL_BYTES = 8 + 16                  # sequence number + Poly1305 tag
SEAL_OVERHEAD_BYTES = _SEAL_BYTES + 4  # and the length of a message alone in its frame
_LENGTH = struct.Struct(">I")
_SEQ = struct.Struct(">Q")
_HELLO_KEYS = {"kind", "protocol", "chain_id", "key", "eph"}


class LinkError(Exception):
    """A rejected frame or handshake; `reason` is a §13 code, counted by the service."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def frame(payload: bytes) -> bytes:
    return _LENGTH.pack(len(payload)) + payload


def pack(messages: list[bytes]) -> bytes:
    """The plaintext of one sealed frame: the messages, each length-prefixed (one seal per batch)."""
    return b"".join(_LENGTH.pack(len(m)) + m for m in messages)


def unpack(plaintext: bytes) -> list[bytes]:
    messages, at = [], 0
    while at < len(plaintext):
        if at + 4 > len(plaintext):
            raise LinkError("bad_frame", "truncated message length")
        (length,) = _LENGTH.unpack_from(plaintext, at)
        at += 4 + length
        if at > len(plaintext):
            raise LinkError("bad_frame", "truncated message")
        messages.append(plaintext[at - length:at])
    return messages


async def read_frame(reader: asyncio.StreamReader, max_bytes: int) -> bytes:
    """One frame; its announced length is checked before a byte of it is read."""
    (length,) = _LENGTH.unpack(await reader.readexactly(4))
    if length > max_bytes:
        raise LinkError("oversized", f"frame of {length} > {max_bytes} bytes")
    return await reader.readexactly(length)


class Session:
    """Sealing after the handshake: one key per direction, nonce = the frame's sequence number,
    which also travels in clear as associated data so a replayed frame is told from a forged one."""

    def __init__(self, send_key: bytes, recv_key: bytes):
        self._send = ChaCha20Poly1305(send_key)
        self._recv = ChaCha20Poly1305(recv_key)
        self.sent = 0
        self.received = 0

    def seal(self, payload: bytes) -> bytes:
        seq = _SEQ.pack(self.sent)
        self.sent += 1
        return seq + self._send.encrypt(b"\0\0\0\0" + seq, payload, seq)

    def open(self, body: bytes) -> bytes:
        if len(body) < _SEAL_BYTES:
            raise LinkError("bad_frame", "short")
        (seq,) = _SEQ.unpack_from(body)
        if seq < self.received:
            raise LinkError("replayed_frame", f"sequence {seq} < {self.received}")
        if seq > self.received:
            raise LinkError("bad_frame", f"sequence gap {seq} > {self.received}")
        try:
            payload = self._recv.decrypt(b"\0\0\0\0" + body[:8], body[8:], body[:8])
        except InvalidTag:
            raise LinkError("bad_frame", "authentication failed") from None
        self.received += 1
        return payload


def _auth_body(chain_id: str, signer: str, peer: str, signer_eph: str, peer_eph: str) -> bytes:
    return signing_bytes(HANDSHAKE_DOMAIN, {"chain_id": chain_id, "signer": signer, "peer": peer,
                                            "signer_eph": signer_eph, "peer_eph": peer_eph})


def _decode_small(data: bytes) -> dict:
    try:
        value = decode(data, MAX_HANDSHAKE_BYTES)
    except CodecError as exc:
        raise LinkError(exc.reason, "handshake") from None
    if type(value) is not dict:
        raise LinkError("malformed", "handshake")
    return value


async def handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: SigningKey, chain_id: str,
                    is_allowed) -> tuple[str, Session]:
    """Mutual authentication (§13.2). Both sides send `hello` with a fresh X25519 key, derive the
    session keys, and send `auth`: an Ed25519 signature over the chain id, both validator keys and
    both ephemeral keys. The peer's own fresh ephemeral key is its challenge, so a recorded
    handshake never verifies again. Returns (peer validator key, session); raises LinkError."""
    eph = X25519PrivateKey.generate()
    my_eph = eph.public_key().public_bytes_raw().hex()
    hello = encode({"kind": "hello", "protocol": PROTOCOL, "chain_id": chain_id, "key": key.public_hex,
                    "eph": my_eph})
    writer.write(frame(hello))
    their_hello = await read_frame(reader, MAX_HANDSHAKE_BYTES)
    theirs = _decode_small(their_hello)
    if set(theirs) != _HELLO_KEYS or theirs["kind"] != "hello" or not is_hex(theirs["key"], 64) \
            or not is_hex(theirs["eph"], 64) or type(theirs["chain_id"]) is not str:
        raise LinkError("malformed", "hello")
    if theirs["protocol"] != PROTOCOL:
        raise LinkError("bad_protocol", str(theirs["protocol"])[:64])
    if theirs["chain_id"] != chain_id:
        raise LinkError("wrong_chain", theirs["chain_id"][:64])
    peer = theirs["key"]
    if peer == key.public_hex or not is_allowed(peer):
        raise LinkError("unknown_peer", peer[:16])
    if theirs["eph"] == my_eph:
        raise LinkError("bad_handshake", "reflected hello")
    try:
        shared = eph.exchange(X25519PublicKey.from_public_bytes(bytes.fromhex(theirs["eph"])))
    except ValueError:
        raise LinkError("bad_handshake", "ephemeral key") from None
    low, high = sorted((hello, their_hello))
    keys = HKDF(hashes.SHA256(), 64, salt=None, info=PROTOCOL.encode() + b"\n" + low + b"\n" + high).derive(shared)
    send_key, recv_key = (keys[:32], keys[32:]) if hello == low else (keys[32:], keys[:32])
    session = Session(send_key, recv_key)
    sig = key.sign(_auth_body(chain_id, key.public_hex, peer, my_eph, theirs["eph"]))
    writer.write(frame(session.seal(encode({"kind": "auth", "sig": sig}))))
    try:
        auth = _decode_small(session.open(await read_frame(reader, MAX_HANDSHAKE_BYTES)))
    except LinkError as exc:      # sealed under other keys: a replayed or spliced handshake
        raise LinkError("bad_handshake", f"auth frame: {exc}") from None
    if set(auth) != {"kind", "sig"} or auth["kind"] != "auth" or not is_hex(auth["sig"], 128):
        raise LinkError("malformed", "auth")
    if not verify(peer, _auth_body(chain_id, peer, key.public_hex, theirs["eph"], my_eph), auth["sig"]):
        raise LinkError("bad_handshake", "signature")
    return peer, session
