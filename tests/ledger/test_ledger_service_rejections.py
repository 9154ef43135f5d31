"""LEDGER.md §10 and §13.4 against real validator processes: forged, replayed, oversized,
wrong-chain and malformed transactions, consensus messages, frames and handshakes are rejected
with a reason and counted, and the validators keep committing."""
import asyncio

import pytest

from gridhive.ledger.codec import encode
from gridhive.ledger.config import load_key
from gridhive.ledger.crypto import SigningKey
from gridhive.ledger.messages import make_proposal, make_vote, tx_msg, vote_msg
from gridhive.ledger.p2p import LinkError, frame, handshake, pack
from gridhive.ledger.tx import make_tx
from ledger_cluster import Cluster


@pytest.fixture
def three_of_four(tmp_path):
    """Validators 0-2 run; the test holds validator 3's key and plays it (or a stranger)."""
    c = Cluster(tmp_path, 4, clients=2)
    c.start_all([0, 1, 2])
    c.wait_ready()
    c.wait_height(2, [0, 1, 2], timeout_s=30)
    yield c
    c.stop_all()


async def connect(node, key, chain_id):
    reader, writer = await asyncio.open_connection(*node.p2p)
    peer, session = await asyncio.wait_for(handshake(reader, writer, key, chain_id, lambda k: True), 5)
    return reader, writer, session


async def closed_by_peer(reader) -> bool:
    """Drain what the validator still sends (gossip, votes) until it closes the link."""
    while await asyncio.wait_for(reader.read(1 << 16), 5):
        pass
    return True


def rejections(c, i=0):
    s = c.status(i)
    return s["rejections"], s["link_rejections"]


def test_bad_transactions_over_http_are_refused_with_their_reason(three_of_four):
    c = three_of_four
    net, api = c.net, c.clients[0]
    a, b = net.clients
    good = make_tx(a, net.chain_id, "transfer", 0, {"to": b.public_hex, "amount_minor": 5})
    api.submit_and_wait(good, 20)
    huge = make_tx(net.operator, net.chain_id, "clearing", 0, {"interval_start_s": 0, "result": {"x": "y" * 70_000}})
    cases = {
        "bad_signature": {**make_tx(a, net.chain_id, "transfer", 1, {"to": b.public_hex, "amount_minor": 5}),
                          "sig": SigningKey.derive("forger").sign(b"x")},
        "nonce_too_low": good,                                                         # replayed
        "oversized": huge,
        "wrong_chain": make_tx(a, "another-chain", "transfer", 1, {"to": b.public_hex, "amount_minor": 5}),
        "malformed": {**good, "nonce": "1"},
        "unauthorized": make_tx(SigningKey.derive("outsider"), net.chain_id, "transfer", 0,
                                {"to": b.public_hex, "amount_minor": 5}),
    }
    before, _ = rejections(c)
    results = api.submit_many(list(cases.values()))
    assert [r["reason"] for r in results] == list(cases)
    after, _ = rejections(c)
    for reason in cases:
        assert after.get(reason, 0) == before.get(reason, 0) + 1, reason


def test_bad_consensus_messages_frames_and_handshakes_are_counted_and_the_chain_goes_on(three_of_four):
    c = three_of_four
    net = c.net
    target = net.nodes[0]
    me = load_key(net.nodes[3].dir / "validator.key")
    other = load_key(net.nodes[1].dir / "validator.key")
    a, b = net.clients
    height = c.height(0)
    good_tx = make_tx(a, net.chain_id, "transfer", 0, {"to": b.public_hex, "amount_minor": 1})
    c.clients[0].submit_and_wait(good_tx, 20)

    async def main():
        reader, writer, session = await connect(target, me, net.chain_id)

        def send(payload):
            writer.write(frame(session.seal(pack([payload]))))

        future = height + 50      # far ahead: nothing here can disturb the running heights
        vote = make_vote(me, net.chain_id, "prevote", future, 0, "")
        send(b"\x00 not json")                                                           # malformed
        send(b'{"kind": "vote"}')                                                        # not canonical
        send(vote_msg({**vote, "extra": 1}))                                             # malformed vote
        send(vote_msg({**vote, "validator": other.public_hex}))                          # forged: bad_signature
        send(vote_msg(make_vote(me, "another-chain", "prevote", future, 0, "")))         # wrong_chain
        send(vote_msg(make_vote(SigningKey.derive("outsider"), net.chain_id, "prevote", c.height(0) + 1, 0, "")))
        #                                                                                 ^ not_validator
        send(encode({"kind": "proposal", "proposal": make_proposal(me, net.chain_id, c.height(0) + 1, 0, 0, "ab" * 32),
                     "block": {}, "pol": []}))                                           # bad_pol_round
        send(tx_msg(good_tx))                                                            # replayed: nonce_too_low
        send(tx_msg(make_tx(a, "another-chain", "transfer", 1, {"to": b.public_hex, "amount_minor": 1})))
        send(tx_msg({**make_tx(a, net.chain_id, "transfer", 1, {"to": b.public_hex, "amount_minor": 1}),
                     "sig": me.sign(b"forged")}))                                        # bad_signature
        sealed = session.seal(pack([vote_msg(vote)]))
        writer.write(frame(sealed) + frame(sealed))                                      # replayed frame
        await writer.drain()
        await asyncio.sleep(0.5)
        forged = session.seal(pack([vote_msg(vote)]))
        writer.write(frame(forged[:-1] + bytes([forged[-1] ^ 1])))                      # forged frame: link closed
        await writer.drain()
        assert await closed_by_peer(reader)
        writer.close()

        reader, writer, session = await connect(target, me, net.chain_id)
        writer.write((100 * 1024 * 1024).to_bytes(4, "big"))                            # oversized frame
        await writer.drain()
        assert await closed_by_peer(reader)
        writer.close()

        for key, chain_id in ((SigningKey.derive("stranger"), net.chain_id), (me, "another-chain")):
            with pytest.raises((LinkError, asyncio.IncompleteReadError, ConnectionError)):
                await connect(target, key, chain_id)                                     # unknown_peer, wrong_chain
        await asyncio.sleep(0.5)

    asyncio.run(main())
    core, link = rejections(c)
    for reason, count in {"malformed": 3, "bad_signature": 2, "wrong_chain": 2, "not_validator": 1,
                          "bad_pol_round": 1, "nonce_too_low": 1}.items():
        assert core.get(reason, 0) >= count, (reason, core)
    for reason in ("replayed_frame", "bad_frame", "oversized", "unknown_peer", "wrong_chain"):
        assert link.get(reason, 0) >= 1, (reason, link)
    c.wait_height(c.height(0) + 3, [0, 1, 2], timeout_s=30)
    assert c.assert_one_chain() >= height + 3
