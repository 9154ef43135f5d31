"""LEDGER.md §1.2: signature validity is libsodium's rule. The ledger verifies with ed25519-zebra
(ZIP 215), which also accepts small-order and non-canonical points; `verify` adds those checks.
Each case is checked against libsodium itself, and the small-order cases are built so that
ed25519-zebra alone accepts them: without the added checks they would pass."""
import hashlib
import os

import ed25519_zebra
import pytest
from nacl.bindings import crypto_scalarmult_ed25519_base_noclamp, crypto_sign_open
from nacl.exceptions import CryptoError

from gridhive.ledger import crypto
from gridhive.ledger.crypto import SigningKey, verify

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
ORDER_8_Y = 2707385501144840649318225287225658788936804267575313519463743609750303402022
# encodings of the small-order points, both signs of x, and the non-canonical ones (y + p)
SMALL_ORDER = [(y | sign << 255).to_bytes(32, "little")
               for y in (0, 1, P - 1, ORDER_8_Y, P - ORDER_8_Y, P, P + 1) for sign in (0, 1)]


def libsodium(public: bytes, message: bytes, sig: bytes) -> bool:
    try:
        crypto_sign_open(sig + message, public)
        return True
    except CryptoError:
        return False


def check(public: bytes, message: bytes, sig: bytes) -> bool:
    crypto._VERIFIED.clear()
    return verify(public.hex(), message, sig.hex())


def secret_scalar(key: SigningKey) -> int:
    h = bytearray(hashlib.sha512(key.seed()).digest()[:32])
    h[0] &= 248
    h[31] = (h[31] & 127) | 64
    return int.from_bytes(h, "little")


def challenge(r: bytes, public: bytes, message: bytes) -> int:
    return int.from_bytes(hashlib.sha512(r + public + message).digest(), "little") % L


def test_honest_and_tampered_signatures_agree_with_libsodium():
    for i in range(200):
        key, message = SigningKey.generate(), os.urandom(i)
        public, sig = bytes.fromhex(key.public_hex), bytes.fromhex(key.sign(message))
        assert check(public, message, sig) and libsodium(public, message, sig)
        bad = bytearray(sig)
        bad[i % 64] ^= 1 << (i % 8)
        assert not check(public, message, bytes(bad)) and not libsodium(public, message, bytes(bad))
        assert not check(public, message + b"x", sig)


def test_a_non_canonical_s_is_refused():
    key, message = SigningKey.generate(), b"m"
    public, sig = bytes.fromhex(key.public_hex), bytes.fromhex(key.sign(message))
    s_plus_l = (int.from_bytes(sig[32:], "little") + L).to_bytes(32, "little")
    assert not libsodium(public, message, sig[:32] + s_plus_l)
    assert not check(public, message, sig[:32] + s_plus_l)


@pytest.mark.parametrize("r", SMALL_ORDER, ids=lambda e: e.hex()[:8] + e.hex()[-2:])
def test_a_small_order_r_is_refused(r):
    """S = k·a makes [8]SB = [8]R + [8]kA hold for any R of small order: ZIP 215 accepts it."""
    key, message = SigningKey.generate(), b"pay 1000 to mallory"
    public = bytes.fromhex(key.public_hex)
    sig = r + (challenge(r, public, message) * secret_scalar(key) % L).to_bytes(32, "little")
    assert ed25519_zebra.ed_verify(sig, message, public) is True      # so the check verify adds matters
    assert not libsodium(public, message, sig)
    assert not check(public, message, sig)


@pytest.mark.parametrize("public", SMALL_ORDER, ids=lambda e: e.hex()[:8] + e.hex()[-2:])
def test_a_small_order_key_anyone_could_sign_for_is_refused(public):
    """With A of small order, R = rB and S = r satisfy the cofactored equation for any message."""
    r = int.from_bytes(os.urandom(32), "little") % L
    sig = crypto_scalarmult_ed25519_base_noclamp(r.to_bytes(32, "little")) + r.to_bytes(32, "little")
    message = b"anything at all"
    assert ed25519_zebra.ed_verify(sig, message, public) is True
    assert not libsodium(public, message, sig)
    assert not check(public, message, sig)
