"""LEDGER.md §8.4 (state sync): a node far behind fetches a peer's newest snapshot in chunks,
verifies it against the commit of its final header, and goes on from there. In process for the
verification rules; with real validator processes for a late and a long-offline validator."""
import signal

from ledger_cluster import FAST, Cluster
from ledger_world import CHAIN, World
from gridhive.ledger.actions import InstallSnapshot, Send
from gridhive.ledger.codec import encode, hash_value
from gridhive.ledger.consensus import ConsensusConfig
from gridhive.ledger.messages import make_vote, snapshot_request_msg, sync_request_msg, vote_msg
from gridhive.ledger.node import Node, NodeConfig
from gridhive.ledger.snapshot import chunk_msgs
from gridhive.ledger.tx import make_tx

T = 1_800_000_000_000


def snapshot_of(w: World, signers: int = 3):
    """The world's state as served: (header, commit by `signers` validators, snapshot bytes)."""
    header = w.last_header
    commit = [make_vote(k, CHAIN, "precommit", header["height"], 0, hash_value(header))
              for k in w.validators[:signers]]
    return header, commit, encode(w.state.snapshot())


def world_at(height: int, txs_at=None) -> World:
    """A chain of `height` blocks with a snapshot at the last one; `txs_at(w)` gives each block's txs."""
    w = World(params={"snapshot_interval_heights": height})
    for _ in range(height):
        block = w.commit(txs_at(w) if txs_at else ())
    w.last_header = block["header"]
    assert w.last_header["snapshot_hash"]
    return w


def asking_node(w: World, peer):
    """A fresh node that has asked `peer` for a snapshot (a message of a later height made it)."""
    node = Node(w.genesis, None, w.rules, NodeConfig(consensus=ConsensusConfig(snapshot_sync_min_heights=2)))
    actions = node.on_message(peer.public_hex, vote_msg(make_vote(peer, CHAIN, "prevote", w.state.height + 1, 0, "")), T)
    assert Send(peer.public_hex, snapshot_request_msg(1)) in actions
    return node


def feed(node, peer, header, commit, snapshot, chunk_bytes=700):
    actions = []
    for data in reversed(chunk_msgs(encode(header), encode(commit), snapshot, chunk_bytes)):   # any order
        actions += node.on_message(peer.public_hex, data, T)
    return actions


def test_a_verified_snapshot_is_installed_and_the_blocks_after_it_are_asked_for():
    a, b = (World().members[h] for h in ("h0", "h1"))
    w = world_at(4, lambda w: [w.tx(a, "transfer", {"to": b.public_hex, "amount_minor": 7})])
    peer = w.validators[1]
    node = asking_node(w, peer)
    header, commit, snapshot = snapshot_of(w)
    assert len(chunk_msgs(encode(header), encode(commit), snapshot, 700)) >= 3
    actions = feed(node, peer, header, commit, snapshot)
    assert actions[0] == InstallSnapshot(header, commit, snapshot)
    assert Send(peer.public_hex, sync_request_msg(5)) in actions
    assert (node.height, node.state.app_hash) == (4, w.state.app_hash)
    assert node.state.get("accounts", b.public_hex)["balance_minor"] == 1_000_000 + 4 * 7
    assert node.consensus.height == 5 and not node.rejections


def test_a_tampered_chunk_or_a_commit_without_quorum_is_refused():
    w = world_at(4)
    peer = w.validators[1]
    header, commit, snapshot = snapshot_of(w)
    tampered = snapshot.replace(b'"nonce":0', b'"nonce":1', 1)
    for case_header, case_commit, case_snapshot in ((header, commit, tampered), (header, commit[:2], snapshot),
                                                    ({**header, "time_ms": header["time_ms"] + 1}, commit, snapshot)):
        node = asking_node(w, peer)
        assert not any(isinstance(x, InstallSnapshot) for x in feed(node, peer, case_header, case_commit, case_snapshot))
        assert node.height == 0 and node.rejections == {"bad_snapshot": 1}


def test_a_snapshot_whose_block_changed_the_validator_set_is_refused_and_chunks_nobody_asked_for_are_dropped():
    newcomer = World().operator      # any key outside the set
    w = World(params={"snapshot_interval_heights": 2})
    w.commit()
    votes = [make_tx(k, CHAIN, "validator_vote", 0, {"action": "add", "validator": newcomer.public_hex, "power": 1})
             for k in w.validators[:3]]
    w.last_header = w.commit(votes)["header"]                  # decided in the snapshot's own block
    peer = w.validators[1]
    header, commit, snapshot = snapshot_of(w)
    node = asking_node(w, peer)
    feed(node, peer, header, commit, snapshot)
    assert node.height == 0 and node.rejections == {"bad_snapshot": 1}
    other = w.validators[2]
    feed(node, other, header, commit, snapshot)                # not asked: redundancy, not a rejection
    assert node.height == 0 and node.rejections == {"bad_snapshot": 1}


def test_late_and_long_offline_validators_catch_up_from_snapshots_not_by_replaying_every_block(tmp_path):
    """§8.4 with real processes: validator 3 joins at height ≥ 30 of a chain with a snapshot every
    5 heights; later it is killed, misses 25 more heights and comes back. Both times it installs
    a peer's snapshot, stores none of the blocks below it, and ends on the others' chain."""
    c = Cluster(tmp_path, 4, clients=2, params={"snapshot_interval_heights": 5},
                consensus={**FAST, "block_period_ms": 100, "empty_block_interval_ms": 100, "timeout_propose_ms": 500,
                           "snapshot_sync_min_heights": 10})
    try:
        c.start_all([0, 1, 2])
        c.wait_ready()
        a, b = c.net.clients
        for nonce in range(3):                # state worth carrying over
            c.clients[nonce].submit_and_wait(make_tx(a, c.net.chain_id, "transfer", nonce,
                                                     {"to": b.public_hex, "amount_minor": 10}), 20)
        c.wait_height(30, [0, 1, 2], timeout_s=60)
        c.start(3)
        c.wait_ready([3])
        joined_at = max(c.height(i) for i in range(3))
        c.wait_height(joined_at + 3, [3], timeout_s=40)
        first = min(h for h, _ in c.chain(3))
        assert first > 25, f"validator 3 replayed from height {first}"
        c.kill(3, signal.SIGKILL)
        offline_from = c.height(3)
        c.wait_height(offline_from + 25, [0, 1, 2], timeout_s=60)
        c.start(3)
        c.wait_ready([3])
        back_at = max(c.height(i) for i in range(3))
        c.wait_height(back_at + 3, [3], timeout_s=40)
        heights = {h for h, _ in c.chain(3)}
        skipped = set(range(first, max(heights))) - heights
        assert len(skipped) >= 15, f"only {len(skipped)} heights skipped after the restart"
        assert c.log(3).count("installed the snapshot of height") == 2
        reference = dict(c.chain(0))
        assert all(reference[h] == bhash for h, bhash in c.chain(3) if h in reference)   # the others' blocks
        s3 = c.status(3)
        assert s3["app_hash"] == c.clients[0].block(s3["height"])["block"]["header"]["app_hash"]
        assert c.clients[3].account(b.public_hex) == c.clients[0].account(b.public_hex)
        assert s3["halted"] is None and "bad_snapshot" not in s3["rejections"]
    finally:
        c.stop_all()
