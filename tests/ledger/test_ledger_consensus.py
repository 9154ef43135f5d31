"""LEDGER.md §6 (consensus rules), §7.1 (detection), §8 (privval, restart, catch-up), §10 (rejections).
One real node is driven by hand; the other validators' messages are built and signed here."""
import pytest

from ledger_world import CHAIN, GENESIS_MS, World
from gridhive.ledger.actions import Broadcast, CommitBlock, PersistSigned, Schedule, Send, ServeBlocks
from gridhive.ledger.codec import decode, encode, hash_value
from gridhive.ledger.consensus import PRECOMMIT, ConsensusConfig
from gridhive.ledger.messages import (NIL, block_bytes, decision_msg, make_proposal, make_vote, parse, proposal_msg,
                                      sync_request_msg, vote_msg)
from gridhive.ledger.node import Node, NodeConfig
from gridhive.ledger.privval import PrivValidator
from gridhive.market.contract import MarketContract
from gridhive.ledger.state import State
from gridhive.ledger.tx import make_tx
from gridhive.ledger.valset import ValidatorSet

T0 = GENESIS_MS + 1_000          # block period after genesis: round 0 may start


class Harness:
    """Node `me` of n validators, with the others' keys to forge their messages."""

    def __init__(self, n=4, config=None, me=None):
        self.world = World(n_validators=n)
        self.keys = sorted(self.world.validators, key=lambda k: k.public_hex)       # proposer order
        self.vset = ValidatorSet(self.world.genesis["validators"])
        # by default `me` proposes nothing at height 1 rounds 0 and 1
        self.me = self.keys[3 if me is None else me]
        self.config = config or ConsensusConfig(empty_block_interval_ms=1_000)
        self.node = self.make_node()

    def make_node(self, record=None, blocks=()):
        return Node(self.world.genesis, self.me, MarketContract(), NodeConfig(consensus=self.config),
                    blocks=blocks, signed_record=record)

    def proposer(self, height, round_):
        return next(k for k in self.keys if k.public_hex == self.vset.proposer(height, round_))

    def block(self, proposer, time_ms=T0, txs=()):
        pending = State(self.world.genesis, MarketContract()).build(time_ms, proposer.public_hex)
        for tx in txs:
            pending.add_tx(tx)
        return pending.seal()

    def others(self):
        return [k for k in self.keys if k is not self.me]

    def feed(self, sender, data, now=T0):
        return self.node.on_message(sender.public_hex, data, now)

    def propose(self, round_, block, pol_round=-1, height=1, now=T0):
        key = self.proposer(height, round_)
        p = make_proposal(key, CHAIN, height, round_, pol_round, hash_value(block["header"]))
        return self.feed(key, proposal_msg(p, block), now)

    def votes(self, vote_type, round_, bhash, voters, height=1, now=T0):
        actions = []
        for key in voters:
            actions += self.feed(key, vote_msg(make_vote(key, CHAIN, vote_type, height, round_, bhash)), now)
        return actions


def own_votes(actions, me):
    out = []
    for a in actions:
        if isinstance(a, Broadcast) and a.exclude is None:
            env = decode(a.data, 1 << 24)
            if env["kind"] == "vote" and env["vote"]["validator"] == me.public_hex:
                out.append((env["vote"]["type"], env["vote"]["round"], env["vote"]["block_hash"]))
    return out


def timers(actions):
    return {a.timer: a.at_ms for a in actions if isinstance(a, Schedule)}


# -- §6.1 validator set --------------------------------------------------------------------------
def test_round_robin_proposer_and_quorum_arithmetic():
    vs = ValidatorSet({"a" * 64: 1, "b" * 64: 1, "c" * 64: 1, "d" * 64: 1})
    assert [vs.proposer(1, r) for r in range(5)] == [vs.order[1], vs.order[2], vs.order[3], vs.order[0], vs.order[1]]
    assert [vs.is_quorum(p) for p in range(5)] == [False, False, False, True, True]        # > 2/3 of 4
    assert [vs.is_one_third(p) for p in range(5)] == [False, False, True, True, True]      # > 1/3 of 4
    weighted = ValidatorSet({"a" * 64: 3, "b" * 64: 1, "c" * 64: 1})
    assert weighted.is_quorum(4) and not weighted.is_quorum(3) and weighted.power_of(["a" * 64, "a" * 64]) == 3


# -- §6.3 the rules, §6.4 timeouts ---------------------------------------------------------------------
def test_timeouts_grow_per_round():
    c = ConsensusConfig()
    assert [c.timeout_ms("propose", r) for r in range(3)] == [1500, 2000, 2500]
    assert [c.timeout_ms("precommit", r) for r in range(3)] == [1000, 1500, 2000]
    h = Harness()
    t = timers(h.node.start(T0))
    assert t[("propose", 1, 0)] == T0 + 1500
    t = timers(h.node.on_timer(("propose", 1, 0), T0 + 1500))              # prevote nil
    t.update(timers(h.votes("prevote", 0, NIL, h.others())))
    t.update(timers(h.votes("precommit", 0, NIL, h.others())))
    assert t[("precommit", 1, 0)] == T0 + 1000                              # [TM] 47-48
    t = timers(h.node.on_timer(("precommit", 1, 0), T0 + 5000))
    assert t[("propose", 1, 1)] == T0 + 5000 + 2000                         # round 1: longer


def test_valid_proposal_gets_prevote_then_quorum_locks_and_precommits_persisting_first():
    h = Harness()
    h.node.start(T0)
    block = h.block(h.proposer(1, 0))
    bhash = hash_value(block["header"])
    actions = h.propose(0, block)
    assert own_votes(actions, h.me) == [("prevote", 0, bhash)]
    persist = next(i for i, a in enumerate(actions) if isinstance(a, PersistSigned))
    assert persist < next(i for i, a in enumerate(actions) if isinstance(a, Broadcast) and a.exclude is None)
    actions = h.votes("prevote", 0, bhash, h.others()[:2])                   # with mine: 3 of 4
    assert own_votes(actions, h.me) == [("precommit", 0, bhash)]
    record = next(a.record for a in actions if isinstance(a, PersistSigned))
    assert record["lock"]["round"] == 0 and hash_value(record["lock"]["block"]["header"]) == bhash
    assert len(record["lock"]["pol"]) == 3
    c = h.node.consensus
    assert (c.locked_round, c.locked_hash, c.valid_round, c.step) == (0, bhash, 0, PRECOMMIT)


def test_invalid_or_untimely_block_gets_nil_prevote():
    h = Harness()
    h.node.start(T0)
    bad = h.block(h.proposer(1, 0))
    bad["header"]["app_hash"] = "00" * 32
    assert own_votes(h.propose(0, bad), h.me) == [("prevote", 0, NIL)]
    h2 = Harness()
    h2.node.start(T0)
    future = h2.block(h2.proposer(1, 0), time_ms=T0 + 1_001)               # beyond max_clock_skew_ms
    assert own_votes(h2.propose(0, future), h2.me) == [("prevote", 0, NIL)]


def test_quorum_of_nil_prevotes_gives_nil_precommit():
    h = Harness()
    h.node.start(T0)
    h.node.on_timer(("propose", 1, 0), T0 + 1500)
    actions = h.votes("prevote", 0, NIL, h.others()[:2], now=T0 + 1600)
    assert own_votes(actions, h.me) == [("precommit", 0, NIL)]


def lock_on_round_0(h):
    h.node.start(T0)
    block = h.block(h.proposer(1, 0))
    h.propose(0, block)
    h.votes("prevote", 0, hash_value(block["header"]), h.others()[:2])
    h.votes("precommit", 0, NIL, h.others())                                 # nobody else precommits it
    h.node.on_timer(("precommit", 1, 0), T0 + 2000)
    return block


def test_a_locked_validator_prevotes_nil_for_another_value_until_a_newer_proof():
    h = Harness()
    lock_on_round_0(h)
    other = h.block(h.proposer(1, 1), time_ms=T0 + 5)
    assert own_votes(h.propose(1, other, now=T0 + 2100), h.me) == [("prevote", 1, NIL)]   # [TM] 22-27


def test_a_newer_proof_of_lock_releases_the_lock():
    h = Harness()
    locked = lock_on_round_0(h)
    other = h.block(h.proposer(1, 1), time_ms=T0 + 5)
    other_hash = hash_value(other["header"])
    # round 1: `other`'s proposal does not reach us, but the others prevote it: a proof-of-lock for round 1
    assert own_votes(h.node.on_timer(("propose", 1, 1), T0 + 4000), h.me) == [("prevote", 1, NIL)]
    h.votes("prevote", 1, other_hash, h.others(), now=T0 + 4100)
    h.votes("precommit", 1, NIL, h.others(), now=T0 + 4200)
    actions = h.node.on_timer(("precommit", 1, 1), T0 + 6000)
    # round 2 is ours: we re-propose our valid value with its round ([TM] 11-21)
    sent = [decode(a.data, 1 << 24) for a in actions if isinstance(a, Broadcast)]
    mine = next(e for e in sent if e["kind"] == "proposal")
    assert (mine["proposal"]["round"], mine["proposal"]["pol_round"]) == (2, 0)
    assert mine["proposal"]["block_hash"] == hash_value(locked["header"])
    assert [v["round"] for v in mine["pol"]] == [0, 0, 0]                     # its proof travels along
    h.votes("precommit", 2, NIL, h.others(), now=T0 + 6100)
    h.node.on_timer(("precommit", 1, 2), T0 + 9000)
    actions = h.propose(3, other, pol_round=1, now=T0 + 9100)
    assert own_votes(actions, h.me) == [("prevote", 3, other_hash)]        # [TM] 28-33: lockedRound 0 <= 1


def test_commit_on_quorum_precommits_persists_the_block_before_the_next_height():
    h = Harness()
    h.node.start(T0)
    block = h.block(h.proposer(1, 0))
    bhash = hash_value(block["header"])
    h.propose(0, block)
    h.votes("prevote", 0, bhash, h.others()[:2])
    actions = h.votes("precommit", 0, bhash, h.others()[:2])
    commits = [a for a in actions if isinstance(a, CommitBlock)]
    assert len(commits) == 1 and commits[0].height == 1 and len(commits[0].commit) == 3
    first = actions.index(commits[0])
    assert not any(isinstance(a, Schedule) and a.timer[1] == 2 for a in actions[:first])   # nothing of h + 1 before
    assert h.node.height == 1 and h.node.consensus.height == 2
    status = h.node.status()
    assert (status["height"], status["consensus"]["step"], len(status["validators"])) == (1, "new_height", 4)
    assert status["last_block_hash"] == bhash and status["is_validator"]
    start = timers(actions)[("start", 2, 0)]
    assert start == block["header"]["time_ms"] + 1_000                        # block period


def test_a_received_blocks_bytes_are_cut_from_its_envelope_and_serve_its_execution_and_store():
    """§12: a block that came in a proposal is executed and stored from the bytes it came in,
    which are exactly its canonical encoding; without them the node encodes it, to the same end."""
    h = Harness()
    world = h.world
    txs = [make_tx(world.members[f"h{i}"], CHAIN, "transfer", 0,
                   {"to": world.members["h0"].public_hex, "amount_minor": 1 + i}) for i in (1, 2)]
    block = h.block(h.proposer(1, 0), txs=txs)
    bhash = hash_value(block["header"])
    key = h.proposer(1, 0)
    data = proposal_msg(make_proposal(key, CHAIN, 1, 0, -1, bhash), block)
    assert block_bytes(parse(data, 1 << 24), data) == encode(block)
    decision = decision_msg(block, [])
    assert block_bytes(parse(decision, 1 << 24), decision) == encode(block)
    assert block_bytes(parse(data, 1 << 24), data[:-1] + b" ") is None               # not that envelope

    h.node.start(T0)
    h.feed(key, data)
    assert h.node.block_bytes(bhash) == encode(block)
    h.votes("prevote", 0, bhash, h.others()[:2])
    actions = h.votes("precommit", 0, bhash, h.others()[:2])
    assert [a.height for a in actions if isinstance(a, CommitBlock)] == [1] and h.node.height == 1
    assert h.node.block_bytes(bhash) == encode(block)                               # kept for the store
    plain = State(world.genesis, MarketContract())
    assert plain.execute(decode(encode(block), 1 << 24)).block == \
        State(world.genesis, MarketContract()).execute(block, block_bytes=encode(block)).block


def test_one_third_in_a_later_round_makes_a_node_skip_ahead():
    h = Harness()
    h.node.start(T0)
    h.votes("prevote", 5, NIL, h.others()[:1])
    assert h.node.consensus.round == 0
    h.votes("prevote", 5, NIL, h.others()[1:2])                               # 2 of 4 > 1/3
    assert h.node.consensus.round == 5


def test_equivocation_is_detected_and_never_counted():
    h = Harness()
    h.node.start(T0)
    block = h.block(h.proposer(1, 0))
    bhash = hash_value(block["header"])
    h.propose(0, block)
    liar = h.others()[0]
    h.votes("prevote", 0, bhash, [liar])
    h.votes("prevote", 0, NIL, [liar])
    assert len(h.node.evidence) == 1
    assert list(h.node.consensus.votes[(0, "prevote")][liar.public_hex]) == [bhash]
    # the proposer equivocates too
    twin = h.block(h.proposer(1, 0), time_ms=T0 + 1)
    h.propose(0, twin)
    assert len(h.node.evidence) == 2
    ev = h.node.evidence.pending(5)
    assert {e["kind"] for e in ev} == {"duplicate_vote", "duplicate_proposal"}


def test_a_proof_of_lock_counts_the_equivocators_other_vote():
    """An equivocator's prevote for A helped an honest node lock A; we first saw its nil prevote.
    The proposal's proof-of-lock brings the A version, which then counts ([TM]: every message counts)."""
    h = Harness()
    h.node.start(T0)
    liar, honest = h.others()[0], h.others()[1:]
    block = h.block(h.proposer(1, 0))
    bhash = hash_value(block["header"])
    h.votes("prevote", 0, NIL, [liar])
    h.node.on_timer(("propose", 1, 0), T0 + 1500)
    h.votes("precommit", 0, NIL, h.others(), now=T0 + 1600)
    h.node.on_timer(("precommit", 1, 0), T0 + 3000)
    pol = [make_vote(k, CHAIN, "prevote", 1, 0, bhash) for k in [liar, *honest]]
    key = h.proposer(1, 1)
    p = make_proposal(key, CHAIN, 1, 1, 0, bhash)
    actions = h.feed(key, proposal_msg(p, block, pol), now=T0 + 3100)
    assert own_votes(actions, h.me) == [("prevote", 1, bhash)]
    assert len(h.node.evidence) == 1
    assert set(h.node.consensus.votes[(0, "prevote")][liar.public_hex]) == {NIL, bhash}


def test_bad_messages_are_counted_and_never_raise():
    h = Harness()
    h.node.start(T0)
    stranger = World(n_validators=5).validators[4]
    block = h.block(h.proposer(1, 0))
    bhash = hash_value(block["header"])
    wrong = h.proposer(1, 1)
    h.feed(wrong, proposal_msg(make_proposal(wrong, CHAIN, 1, 0, -1, bhash), block))
    h.feed(stranger, vote_msg(make_vote(stranger, CHAIN, "prevote", 1, 0, bhash)))
    v = make_vote(h.others()[0], CHAIN, "prevote", 1, 0, bhash)
    h.feed(h.others()[0], vote_msg({**v, "round": 1}))
    h.feed(h.others()[0], vote_msg(make_vote(h.others()[0], "other-chain", "prevote", 1, 0, bhash)))
    h.feed(h.others()[0], b'{"kind":"vote"}')
    h.feed(h.others()[0], b"\x00garbage")
    h.feed(h.others()[0], b'{"kind":"vote","vote":{}}')
    p = make_proposal(h.proposer(1, 2), CHAIN, 1, 2, 2, bhash)
    h.feed(h.others()[0], proposal_msg(p, block))
    h.feed(h.others()[0], b" " * (h.node.max_msg_bytes + 1))
    assert dict(h.node.rejections) == {"wrong_proposer": 1, "not_validator": 1, "bad_signature": 1,
                                       "wrong_chain": 1, "malformed": 3, "bad_pol_round": 1, "oversized": 1}
    assert h.node.consensus.votes.get((0, "prevote"), {}) == {}


# -- §8.1 privval, §8.2 restart --------------------------------------------------------------------
def test_privval_never_signs_backwards_or_twice_differently():
    key = World().validators[0]
    pv = PrivValidator(key)
    unsigned = {"chain_id": CHAIN, "type": "prevote", "height": 2, "round": 1, "block_hash": NIL,
                "validator": key.public_hex}
    first, record = pv.sign(unsigned)
    assert record["msg"] == first and (record["height"], record["round"], record["step"]) == (2, 1, 2)
    again, record2 = pv.sign({**unsigned, "block_hash": "ab" * 32})
    assert again == first and record2 is None                                   # same HRS: old message
    assert pv.sign({**unsigned, "round": 0}) == (None, None)                     # backwards
    assert pv.sign({**unsigned, "type": "precommit", "block_hash": "ab" * 32}, {"header": {}})[1]["lock"]["round"] == 1


def locked_on_round_0(h):
    """`h`'s node, started, sees the round-0 block and a prevote quorum for it, so it locks and
    precommits: (the block's hash, the last-signed record it persisted)."""
    h.node.start(T0)
    block = h.block(h.proposer(1, 0))
    bhash = hash_value(block["header"])
    h.propose(0, block)
    actions = h.votes("prevote", 0, bhash, h.others()[:2])
    return bhash, [a.record for a in actions if isinstance(a, PersistSigned)][-1]


def test_restart_from_the_signed_record_keeps_the_lock_and_signs_nothing_conflicting():
    h = Harness()
    bhash, record = locked_on_round_0(h)
    # crash; restart from the record
    h.node = h.make_node(record=record)
    actions = h.node.start(T0 + 100)
    c = h.node.consensus
    assert (c.round, c.locked_round, c.locked_hash) == (0, 0, bhash)
    assert own_votes(h.votes("prevote", 0, NIL, h.others(), now=T0 + 200), h.me) == []   # no nil precommit at r0
    h.node.on_timer(("precommit", 1, 0), T0 + 3000)
    other = h.block(h.proposer(1, 1), time_ms=T0 + 7)
    assert own_votes(h.propose(1, other, now=T0 + 3100), h.me) == [("prevote", 1, NIL)]


def test_a_node_restarted_after_its_precommit_still_sends_the_prevote_before_it():
    """§8.1: peers that missed a node's prevote may need it for their quorum; after a restart
    nothing else could resend it (found by the SIGKILL suite as a cluster stuck in prevote)."""
    h = Harness()
    bhash, record = locked_on_round_0(h)
    assert record["step"] == 3 and record["prevote"]["type"] == "prevote" and record["prevote"]["block_hash"] == bhash
    h.node = h.make_node(record=record)                       # crash; restart from the record
    actions = h.node.start(T0 + 100) + h.node.on_timer(("retransmit", 1, 0), T0 + 2_000)
    assert sorted(set(own_votes(actions, h.me))) == [("precommit", 0, bhash), ("prevote", 0, bhash)]


def test_restart_replays_stored_blocks():
    h = Harness()
    h.node.start(T0)
    block = h.block(h.proposer(1, 0))
    bhash = hash_value(block["header"])
    h.propose(0, block)
    h.votes("prevote", 0, bhash, h.others()[:2])
    actions = h.votes("precommit", 0, bhash, h.others()[:2])
    commit = next(a for a in actions if isinstance(a, CommitBlock))
    restarted = h.make_node(blocks=[commit.block])
    assert restarted.height == 1 and restarted.state.app_hash == h.node.state.app_hash
    assert restarted.consensus.height == 2


# -- §8.3 catch-up ---------------------------------------------------------------------------------
def certificate(h, block, signers, round_=0):
    bhash = hash_value(block["header"])
    return [make_vote(k, CHAIN, "precommit", 1, round_, bhash) for k in signers]


def test_decision_with_a_valid_certificate_is_applied():
    h = Harness()
    h.node.start(T0)
    block = h.block(h.proposer(1, 0))
    actions = h.feed(h.others()[0], decision_msg(block, certificate(h, block, h.others())))
    assert h.node.height == 1 and any(isinstance(a, CommitBlock) for a in actions)


@pytest.mark.parametrize("case", ["no_quorum", "forged", "mixed_rounds", "duplicate_signer"])
def test_decision_without_a_valid_certificate_is_rejected(case):
    h = Harness()
    h.node.start(T0)
    block = h.block(h.proposer(1, 0))
    cert = certificate(h, block, h.others())
    if case == "no_quorum":
        cert = cert[:2]
    elif case == "forged":
        cert[0] = {**cert[0], "sig": cert[1]["sig"]}
    elif case == "mixed_rounds":
        cert[0] = certificate(h, block, h.others()[:1], round_=1)[0]
    else:
        cert = cert[:2] + cert[:1]
    h.feed(h.others()[0], decision_msg(block, cert))
    assert h.node.height == 0
    assert h.node.rejections["invalid_commit"] + h.node.rejections["bad_signature"] == 1


def test_lagging_and_leading_peers_trigger_sync():
    h = Harness()
    h.node.start(T0)
    ahead = h.others()[0]
    actions = h.feed(ahead, vote_msg(make_vote(ahead, CHAIN, "prevote", 3, 0, NIL)))
    assert [a for a in actions if isinstance(a, Send)] == [Send(ahead.public_hex, sync_request_msg(1))]
    assert h.feed(ahead, sync_request_msg(1)) == []                          # nothing final to serve yet
    # after a commit, an old vote from its own signer gets served blocks; a relayed one does not
    block = h.block(h.proposer(1, 0))
    h.feed(h.others()[0], decision_msg(block, certificate(h, block, h.others())))
    behind, relay = h.others()[1], h.others()[2]
    old = vote_msg(make_vote(behind, CHAIN, "prevote", 1, 3, NIL))
    assert h.feed(relay, old, now=T0 + 10) == []
    old2 = vote_msg(make_vote(behind, CHAIN, "prevote", 1, 4, NIL))
    assert h.feed(behind, old2, now=T0 + 20) == []          # one height behind: probably about to commit it
    old3 = vote_msg(make_vote(behind, CHAIN, "prevote", 1, 5, NIL))
    assert ServeBlocks(behind.public_hex, 1, 16) in h.feed(behind, old3, now=T0 + 20 + h.config.retransmit_ms)


# -- §6.4 empty blocks -------------------------------------------------------------------------------
def test_empty_block_policy_waits_for_work_or_the_interval():
    h = Harness(config=ConsensusConfig(empty_block_interval_ms=30_000), me=1)   # proposer of (1, 0)
    t = timers(h.node.start(T0))
    assert t == {("start", 1, 0): GENESIS_MS + 30_000} and h.node.consensus.step == 0
    a, b = h.world.members["h0"], h.world.members["h1"]
    tx = h.world.tx(a, "transfer", {"to": b.public_hex, "amount_minor": 1})
    reason, actions = h.node.submit_tx(tx, T0 + 10)
    assert reason is None
    proposals = [decode(x.data, 1 << 24) for x in actions if isinstance(x, Broadcast)]
    block = next(p["block"] for p in proposals if p["kind"] == "proposal")
    assert block["txs"] == [tx]
    assert h.node.submit_tx(tx, T0 + 20)[0] == "duplicate"
