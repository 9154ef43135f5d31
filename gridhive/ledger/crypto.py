"""Ed25519 (LEDGER.md §1.2): keys and signing via `cryptography`; verification is what every
validator spends most of its time on (each verifies every transaction once), so it uses the
fastest implementation at hand, ed25519-zebra (38 µs here, libsodium 47–60, OpenSSL 110),
with libsodium's stricter rules for the points added. Keys and signatures travel as lowercase hex."""
import hashlib

import ed25519_zebra
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .codec import digest, is_hex

_P = 2**255 - 19
_Y_MASK = (1 << 255) - 1                      # an encoding is y, with the sign of x in the top bit
_ORDER_8_Y = 2707385501144840649318225287225658788936804267575313519463743609750303402022
_SMALL_ORDER_Y = frozenset({0, 1, _P - 1, _ORDER_8_Y, _P - _ORDER_8_Y})   # the 8 points of order 1, 2, 4, 8


def _strict_point(encoding: bytes) -> bool:
    """§1.2, where ZIP 215 (ed25519-zebra's rules) is more lenient: the encoding is canonical
    (y < p) and the point is not of small order (for which a key anyone can sign exists)."""
    y = int.from_bytes(encoding, "little") & _Y_MASK
    return y < _P and y not in _SMALL_ORDER_Y


class SigningKey:
    """A private Ed25519 key; `public_hex` is the account address."""

    def __init__(self, private: Ed25519PrivateKey):
        self._private = private
        self.public_hex = private.public_key().public_bytes_raw().hex()

    @classmethod
    def generate(cls) -> "SigningKey":
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> "SigningKey":
        """Deterministic key from a 32-byte seed (provisioning, simulations)."""
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def derive(cls, label: str) -> "SigningKey":
        """Deterministic key from a label; only for tests and simulations."""
        return cls.from_seed(bytes.fromhex(digest(label.encode())))

    def seed(self) -> bytes:
        return self._private.private_bytes_raw()

    def sign(self, data: bytes) -> str:
        return self._private.sign(data).hex()


_VERIFIED: dict[bytes, bool] = {}
_VERIFIED_MAX = 1 << 16


def verify(public_hex: str, data: bytes, sig_hex: str) -> bool:
    """True if `sig_hex` is `public_hex`'s signature of `data`. Memoised: a tx is verified when
    gossip brings it and again inside the block, votes by relays and catch-up, and a cached answer
    is as good as a fresh one. The memo keys on a digest of key, signature and every signed byte,
    so it costs ~100 bytes an entry whatever the size of the signed data (oldest out first)."""
    if not (is_hex(public_hex, 64) and is_hex(sig_hex, 128)):
        return False
    memo = hashlib.sha256(public_hex.encode() + sig_hex.encode() + data).digest()
    known = _VERIFIED.get(memo)
    if known is not None:
        return known
    public, sig = bytes.fromhex(public_hex), bytes.fromhex(sig_hex)
    ok = _strict_point(public) and _strict_point(sig[:32]) and ed25519_zebra.ed_verify(sig, data, public)
    _VERIFIED[memo] = ok
    if len(_VERIFIED) > _VERIFIED_MAX:
        del _VERIFIED[next(iter(_VERIFIED))]
    return ok
