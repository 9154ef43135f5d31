"""LEDGER.md §13–§16 with real validator processes on loopback: consensus, the client API
(submit, finality, state; the market's txs and provenance are in test_market_on_ledger.py), catch-up, f offline, a 2|2 partition, SIGKILL at random
points. Every test ends by checking that all stored chains are prefixes of one chain."""
import random
import signal
import threading
import time

import pytest

from gridhive.ledger.client import LedgerClient, LedgerError
from gridhive.ledger.tx import make_tx
from ledger_cluster import Cluster


@pytest.fixture
def cluster(tmp_path):
    made = []

    def make(n, **kw):
        made.append(Cluster(tmp_path / f"c{len(made)}", n, **kw))
        return made[-1]

    yield make
    for c in made:
        c.stop_all()


def transfer(net, sender, nonce, to, amount=1):
    return make_tx(sender, net.chain_id, "transfer", nonce, {"to": to.public_hex, "amount_minor": amount})


def test_seven_validators_with_skewed_clocks_reach_consensus(cluster):
    """4 to 7 validators as processes (§6); clocks skewed within max_clock_skew_ms (§6.6)."""
    c = cluster(7, clients=2)
    for node, skew_ms in zip(c.net.nodes, (-400, 0, 0, 300, 0, 0, 400)):
        node.config.write_text(node.config.read_text() + f"\n[test]\nclock_offset_ms = {skew_ms}\n")
    c.start_all()
    c.wait_ready()
    a, b = c.net.clients
    results = [c.clients[i % 7].submit(transfer(c.net, a, i, b)) for i in range(5)]
    assert all(r["accepted"] for r in results), results
    where = c.clients[6].wait_final(results[-1]["tx_id"], 30)
    c.wait_height(where["height"] + 1, timeout_s=30)
    assert c.clients[3].account(a.public_hex) == {"nonce": 5, "balance_minor": 10**9 - 5}
    assert c.assert_one_chain() >= 3
    status = c.status(0)
    assert len(status["validators"]) == 7 and sum(p["connected"] for p in status["peers"]) == 6
    assert len(status["last_commit"]["signers"]) >= 5                        # a quorum of 7


def test_f_offline_stays_live_and_the_late_validator_catches_up_with_verified_commits(cluster):
    """§6 liveness with f = 1 of 4 down; §8.3 catch-up of a validator that was never up."""
    c = cluster(4)
    c.start_all([0, 1, 2])
    c.wait_ready()
    c.wait_height(8, [0, 1, 2], timeout_s=40)
    c.start(3)
    c.wait_ready([3])
    target = max(c.height(i) for i in range(3))
    c.wait_height(target + 2, timeout_s=30)
    assert c.assert_one_chain() >= target + 2
    s3 = c.status(3)
    assert s3["rejections"].get("invalid_commit", 0) == 0 and s3["halted"] is None


def test_2_2_partition_commits_nothing_and_progresses_once_healed(cluster):
    """§6 safety: with the admin switch, {0,1} and {2,3} drop each other's links."""
    c = cluster(4, admin=True)
    c.start_all()
    c.wait_ready()
    c.wait_height(3, timeout_s=30)
    keys = [node.key for node in c.net.nodes]
    for i in range(4):
        c.clients[i].set_blocked(keys[2:] if i < 2 else keys[:2])
    time.sleep(1.5)                   # a height whose precommits were already out may still land
    frozen = [c.height(i) for i in range(4)]
    time.sleep(4)
    assert [c.height(i) for i in range(4)] == frozen, "a half of the network committed alone"
    assert all(sum(p["connected"] for p in c.status(i)["peers"]) == 1 for i in range(4))
    for i in range(4):
        c.clients[i].set_blocked([])
    c.wait_height(max(frozen) + 3, timeout_s=30)
    assert c.assert_one_chain() >= max(frozen) + 3


def test_sigkill_and_restart_at_random_points_never_forks_loses_or_double_signs(cluster):
    """§8: any validator killed at any moment, under load, restarts from its store."""
    rng = random.Random(4)
    c = cluster(4, clients=8)
    c.start_all()
    c.wait_ready()
    c.wait_height(2, timeout_s=30)
    stop = threading.Event()
    submitted = []

    def load():                     # transfers at the committed nonce: a tx lost with its node is simply redone
        clients = [LedgerClient(node.api, timeout_s=5) for node in c.net.nodes]
        pick = random.Random(5)
        while not stop.is_set():
            k, i = pick.randrange(len(c.net.clients)), pick.randrange(c.n)
            sender = c.net.clients[k]
            try:
                nonce = clients[i].account(sender.public_hex)["nonce"]
                res = clients[i].submit(transfer(c.net, sender, nonce, c.net.clients[(k + 1) % 8]))
                if res["accepted"]:
                    submitted.append(res["tx_id"])
            except (OSError, LedgerError):
                pass                    # that validator is down right now
            time.sleep(0.02)

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    kills = []
    deadline = time.monotonic() + 25
    while time.monotonic() < deadline:
        victims = rng.sample(range(c.n), 2 if rng.random() < 0.3 else 1)    # 2 > f: a stall, never a fork
        time.sleep(rng.uniform(0.0, 1.5))            # a random point in their work
        before = {i: c.height(i) for i in victims}
        for i in victims:
            c.kill(i, signal.SIGKILL)
        kills.extend(victims)
        time.sleep(rng.uniform(0.0, 1.5))
        for i in victims:
            c.start(i)
        c.wait_ready(victims)
        for i in victims:
            assert c.height(i) >= before[i], f"validator {i} lost final blocks over a SIGKILL"
    stop.set()
    loader.join(10)
    target = max(c.height(i) for i in range(c.n))
    c.wait_height(target + 2, timeout_s=40)
    height = c.assert_one_chain()
    assert len(kills) >= 8 and height >= target + 2
    for i in range(c.n):                              # an honest double-sign would surface as evidence
        s = c.status(i)
        assert s["pending_evidence"] == 0 and s["halted"] is None
    assert all(not c.clients[0].block(h)["block"]["evidence"] for h in range(1, height + 1))
    assert submitted, "the load generator got nothing in"
    assert c.clients[0].wait_final(submitted[0], 10)["status"] == "final"
