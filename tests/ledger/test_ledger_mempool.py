"""LEDGER.md §9 (mempool) and the node's admission path (§3.2, §10)."""
import pytest

from gridhive.ledger.codec import encode
from gridhive.ledger.crypto import SigningKey
from gridhive.ledger.mempool import Mempool, MempoolConfig
from gridhive.ledger.node import Node, NodeConfig
from gridhive.ledger.tx import TxError, make_tx, tx_id


def txs(w, who, nonces):
    b = w.members["h1"].public_hex
    return [make_tx(w.members[who], "gridhive-test", "transfer", n, {"to": b, "amount_minor": 1}) for n in nonces]


def add(pool, tx, account_nonce=0, now_ms=0):
    pool.add(tx, tx_id(tx), account_nonce, now_ms, size_bytes=len(encode(tx)))


@pytest.mark.parametrize("config, nonces, account_nonce, reason", [
    (MempoolConfig(), [0, 0], 0, "duplicate"),
    (MempoolConfig(), [3], 4, "nonce_too_low"),
    (MempoolConfig(max_future_nonces=2), [2], 0, "nonce_gap"),
    (MempoolConfig(max_per_sender=2), [0, 1, 2], 0, "sender_full"),
    (MempoolConfig(max_txs=1), [0, 1], 0, "mempool_full"),
])
def test_admission_limits(world, config, nonces, account_nonce, reason):
    pool = Mempool(config)
    batch = txs(world, "h0", nonces)
    for tx in batch[:-1]:
        add(pool, tx, account_nonce)
    with pytest.raises(TxError) as exc:
        add(pool, batch[-1], account_nonce)
    assert exc.value.reason == reason


def test_same_nonce_different_tx_is_refused(world):
    pool = Mempool()
    add(pool, txs(world, "h0", [0])[0])
    other = make_tx(world.members["h0"], "gridhive-test", "transfer", 0,
                    {"to": world.members["h2"].public_hex, "amount_minor": 2})
    with pytest.raises(TxError, match="nonce_taken"):
        add(pool, other)


def test_runs_are_consecutive_nonces_oldest_sender_first(world):
    pool = Mempool()
    late = txs(world, "h1", [0])
    early = txs(world, "h0", [1, 0, 3])           # nonce 3 waits for 2
    for tx in early + late:
        add(pool, tx)
    runs = pool.runs(lambda sender: 0)
    assert [[t["nonce"] for _, t in run] for run in runs] == [[0, 1], [0]]
    assert runs[0][0][1]["sender"] == world.members["h0"].public_hex
    assert pool.has_ready(lambda sender: 0) and not pool.has_ready(lambda sender: 9)


def test_update_drops_included_and_expired(world):
    pool = Mempool(MempoolConfig(ttl_ms=1_000))
    for tx in txs(world, "h0", [0, 1]):
        add(pool, tx, now_ms=0)
    add(pool, txs(world, "h2", [0])[0], now_ms=900)
    pool.update(lambda s: 1 if s == world.members["h0"].public_hex else 0, now_ms=500)
    assert len(pool) == 2
    pool.update(lambda s: 0, now_ms=1_500)
    assert len(pool) == 1


def test_node_admission_checks_signature_authorisation_and_nonce(world):
    node = Node(world.genesis, None, world.rules, NodeConfig())
    good = txs(world, "h0", [0])[0]
    assert node.submit_tx(good, 0)[0] is None
    assert node.submit_tx({**txs(world, "h0", [1])[0], "nonce": 2}, 0)[0] == "bad_signature"
    stranger = make_tx(SigningKey.derive("stranger"), "gridhive-test", "transfer", 0,
                       {"to": world.members["h0"].public_hex, "amount_minor": 1})
    assert node.submit_tx(stranger, 0)[0] == "unauthorized"
    assert node.submit_tx({"junk": 1}, 0)[0] == "malformed"
    assert node.rejections == {"bad_signature": 1, "unauthorized": 1, "malformed": 1}


def _signed_as_is(key, tx):
    """`tx` signed over its own bytes, whatever its values (a forger's tx with a bool or a huge int)."""
    from gridhive.ledger.codec import encode_unchecked
    from gridhive.ledger.tx import TX_DOMAIN
    return {**tx, "sig": key.sign(TX_DOMAIN.encode() + b"\n" + encode_unchecked(tx))}


@pytest.mark.parametrize("field, value", [
    ("nonce", True), ("nonce", 2**63), ("type", True), ("sender", True), ("chain_id", True),
    ("chain_id", ["gridhive-test"]), ("body", [1]), ("body.amount_minor", True), ("body.amount_minor", 2**63),
    ("body.to", True), ("body.to", None), ("body.to", {"k": 1}), ("nonce", 0.0), ("body.amount_minor", 1.5),
])
def test_a_gossiped_tx_with_a_wrongly_typed_value_is_refused(world, field, value):
    """Gossiped txs skip the codec's type walk (§9 'checked once'): the envelope and schema checks
    must catch every value the walk would have, or a float, a bool or an out-of-range int could enter."""
    from gridhive.ledger.codec import encode_unchecked
    from gridhive.ledger.messages import TX_MSG_PREFIX
    node = Node(world.genesis, None, world.rules, NodeConfig())
    key = world.members["h0"]
    tx = {"chain_id": "gridhive-test", "type": "transfer", "sender": key.public_hex, "nonce": 0,
          "body": {"to": world.members["h1"].public_hex, "amount_minor": 1}}
    name, _, sub = field.partition(".")
    tx = {**tx, "body": {**tx["body"], sub: value}} if sub else {**tx, name: value}
    data = TX_MSG_PREFIX + encode_unchecked(_signed_as_is(key, tx)) + b"}"
    assert node.on_message("peer", data, 0) == []
    assert len(node.mempool) == 0
    assert sum(node.rejections.values()) == 1 and set(node.rejections) <= {"malformed", "wrong_chain"}
