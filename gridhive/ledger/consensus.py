"""The Tendermint state machine of one validator (LEDGER.md §6, [TM] Algorithm 1).

Pure: messages, timers and the local clock come in as arguments; what to send, schedule,
persist and commit goes out as actions. The application (block building, validity, execution)
is reached through the small `App` protocol so this module knows nothing about transactions."""
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from .actions import Broadcast, CommitBlock, Halt, PersistSigned, Schedule, Send, ServeBlocks, ServeSnapshot
from .codec import hash_value
from .evidence import make_evidence
from .messages import (NIL, MsgError, check_signed, decision_msg, proposal_msg, signer_of,
                       snapshot_request_msg, sync_request_msg, vote_msg)
from .privval import PrivValidator
from .valset import ValidatorSet

NEW_HEIGHT, PROPOSE, PREVOTE, PRECOMMIT = 0, 1, 2, 3
STEP_NAMES = {NEW_HEIGHT: "new_height", PROPOSE: "propose", PREVOTE: "prevote", PRECOMMIT: "precommit"}


@dataclass(frozen=True)
class ConsensusConfig:
    block_period_ms: int = 1_000
    empty_block_interval_ms: int = 30_000
    timeout_propose_ms: int = 1_500
    timeout_propose_delta_ms: int = 500
    timeout_prevote_ms: int = 1_000
    timeout_prevote_delta_ms: int = 500
    timeout_precommit_ms: int = 1_000
    timeout_precommit_delta_ms: int = 500
    retransmit_ms: int = 1_000
    max_clock_skew_ms: int = 1_000
    far_rounds_per_validator: int = 2
    future_buffer_per_validator: int = 64
    serve_max_blocks: int = 16
    decision_buffer_heights: int = 64
    relay_fanout: int = 3              # validators each vote is relayed to (§6.4)
    snapshot_sync_min_heights: int = 64     # §8.4: fetch a snapshot when it spares replaying this many blocks
    snapshot_wait_ms: int = 5_000           # how long a requested snapshot may take before blocks are synced

    def timeout_ms(self, kind: str, round_: int) -> int:
        """[TM] §4: timeoutX(r) = initTimeoutX + r * timeoutDelta, so rounds eventually last long enough."""
        return getattr(self, f"timeout_{kind}_ms") + round_ * getattr(self, f"timeout_{kind}_delta_ms")


class App(Protocol):
    def propose_block(self, height: int, now_ms: int) -> dict: ...
    def block_error(self, block: dict) -> str | None: ...          # §4 rules 1–7, cached by hash
    def finalize(self, block: dict, commit: list[dict], now_ms: int) -> ValidatorSet: ...
    def has_work(self) -> bool: ...
    def last_block_time_ms(self) -> int: ...
    def on_evidence(self, evidence: dict) -> None: ...
    def reject(self, reason: str) -> None: ...


def block_hash(block) -> str | None:
    if type(block) is not dict or type(block.get("header")) is not dict:
        return None
    return hash_value(block["header"])


def verify_commit(block: dict, commit, validators: ValidatorSet, chain_id: str) -> None:
    """A commit certificate (§4): quorum of distinct validators' precommits for this block in one round."""
    bhash = block_hash(block)
    if bhash is None or type(commit) is not list or not commit:
        raise MsgError("invalid_commit", "shape")
    height, signers, rounds = block["header"].get("height"), set(), set()
    for vote in commit:
        check_signed(vote, chain_id)
        if (vote.get("type") != "precommit" or vote["height"] != height or vote["block_hash"] != bhash
                or vote["validator"] not in validators or vote["validator"] in signers):
            raise MsgError("invalid_commit", "vote")
        signers.add(vote["validator"])
        rounds.add(vote["round"])
    if len(rounds) != 1 or not validators.is_quorum(validators.power_of(signers)):
        raise MsgError("invalid_commit", "no quorum")


class Consensus:
    def __init__(self, chain_id: str, config: ConsensusConfig, app: App, privval: PrivValidator | None,
                 height: int, validators: ValidatorSet, snapshot_interval_heights: int = 0):
        """`snapshot_interval_heights`: the chain's (§5.3), so catch-up knows which heights have
        snapshots; 0 for none."""
        self.chain_id = chain_id
        self.snapshot_interval_heights = snapshot_interval_heights
        self.snapshot_peer: str | None = None         # the peer last asked for a snapshot (§8.4)
        self._snapshot_asked_ms = -10**12
        self._last_snapshot_serve: dict[str, int] = {}
        self.config = config
        self.app = app
        self.privval = privval
        self.out: list = []
        self._inbox: deque = deque()
        self._last_sync_ms: dict[str, int] = {}
        self._last_serve: dict[str, tuple[int, int]] = {}
        self._peer_behind: dict[str, tuple[int, int]] = {}     # peer -> (height, first seen there, ms)
        self._decisions: dict[int, tuple[str, dict]] = {}
        self._reset_height(height, validators)

    # -- entry points ---------------------------------------------------------------------------
    def start(self, now_ms: int) -> list:
        """Begin at `height`; resume the round and lock of a persisted record (§8.2)."""
        lock = self.privval.lock_for(self.height) if self.privval else None
        record = self.privval.record if self.privval else None
        if lock:
            self.locked_block = self.valid_block = lock["block"]
            self.locked_hash = hash_value(lock["block"]["header"])
            self.locked_round = self.valid_round = lock["round"]
            self.blocks[self.locked_hash] = lock["block"]
            for vote in lock["pol"]:       # so a proposal of the locked value can carry its proof again
                if vote["validator"] in self.validators:
                    self._store_vote(vote, in_pol=True)
        if record and record["height"] == self.height:
            if self.is_validator:
                for vote in self.privval.round_messages():
                    self._store_vote(vote)
                    self._own.setdefault(record["round"], []).append(vote_msg(vote))
            self._start_round(record["round"], now_ms)
        else:
            self._maybe_start(now_ms)
        return self._finish(now_ms)

    def on_envelope(self, peer: str, env: dict, data: bytes, digest: str, now_ms: int) -> list:
        self._inbox.append((peer, env, data, digest))
        return self._finish(now_ms)

    def on_timer(self, timer: tuple, now_ms: int) -> list:
        kind, height, round_ = timer
        if height == self.height:
            if kind == "start" and self.step == NEW_HEIGHT:
                self._maybe_start(now_ms)
            elif round_ == self.round:
                if kind == "propose" and self.step == PROPOSE:          # [TM] 57–60
                    self._vote("prevote", NIL)
                    self.step = PREVOTE
                elif kind == "prevote" and self.step == PREVOTE:        # [TM] 61–64
                    self._vote("precommit", NIL)
                    self.step = PRECOMMIT
                elif kind == "precommit":                               # [TM] 65–67
                    self._start_round(self.round + 1, now_ms)
                elif kind == "retransmit":
                    self._retransmit()
                    self._schedule("retransmit", self.round, now_ms + self.config.retransmit_ms)
        return self._finish(now_ms)

    def on_copy(self, peer: str, digest: str, now_ms: int) -> list | None:
        """None if `digest` is not a consensus message of this height or the last one already
        handled or buffered here. Else the actions for that copy (§6.4: duplicates are dropped by
        hash before they are parsed, let alone verified): none, unless it is a peer's own message
        of the last height, which says that peer is behind (§8.3)."""
        if digest in self._seen or digest in self._future_seen:
            return []
        signer = self._seen_last.get(digest)
        if signer is None:
            return None
        if signer == peer and self._peer_stuck(peer, self.height - 1, now_ms):
            self._serve(peer, self.height - 1, now_ms)
        return self._finish(now_ms)

    def on_work(self, now_ms: int) -> list:
        """The app has something to propose (txs or evidence): end an empty-block wait early.
        Called for every admitted tx: outside that wait it must cost nothing."""
        if self.step != NEW_HEIGHT:
            return []
        self._maybe_start(now_ms)
        return self._finish(now_ms)

    # -- per-height bookkeeping -----------------------------------------------------------------
    def _reset_height(self, height: int, validators: ValidatorSet) -> None:
        self.height, self.validators = height, validators
        self.round, self.step = 0, NEW_HEIGHT
        self.locked_round, self.locked_hash, self.locked_block = -1, None, None
        self.valid_round, self.valid_block = -1, None
        self.proposals: dict[int, dict] = {}
        self.blocks: dict[str, dict] = {}
        # (round, type) -> validator -> block_hash -> vote. One hash per validator unless it
        # equivocated and a proof-of-lock brought the other version (see _store_pol).
        self.votes: dict[tuple[int, str], dict[str, dict[str, dict]]] = {}
        self._powers: dict[tuple, int] = {}       # _power's answers since the votes last changed
        self._round_senders: dict[int, set[str]] = {}
        self._far: dict[str, set[int]] = {}
        self._fired: set[tuple[str, int]] = set()
        self._own: dict[int, list[bytes]] = {}        # own votes per round
        self._proposal_msgs: dict[int, bytes] = {}     # the stored proposals as they came, per round
        # digest -> signer of the messages handled at this height and the last one (retransmissions
        # of a finished height keep coming from nodes that have not finished it yet)
        self._seen_last: dict[str, str] = getattr(self, "_seen", {})
        self._seen: dict[str, str] = {}
        self._future: list[tuple[str, dict, bytes, str]] = []
        self._future_seen: set[str] = set()
        self._start_at_ms: int | None = None

    def _finish(self, now_ms: int) -> list:
        while self._inbox:
            peer, env, data, digest = self._inbox.popleft()
            try:
                self._handle(peer, env, data, digest, now_ms)
            except MsgError as exc:
                self.app.reject(exc.reason)
            self._advance(now_ms)
        self._advance(now_ms)
        out, self.out = self.out, []
        return out

    def _schedule(self, kind: str, round_: int, at_ms: int) -> None:
        self.out.append(Schedule(at_ms, (kind, self.height, round_)))

    @property
    def is_validator(self) -> bool:
        return self.privval is not None and self.privval.pubkey in self.validators

    # -- message intake -------------------------------------------------------------------------
    def _handle(self, peer: str, env: dict, data: bytes, digest: str, now_ms: int) -> None:
        kind = env["kind"]
        if kind == "sync_request":
            self._serve(peer, env["height"], now_ms)
            return
        if kind == "snapshot_request":
            self._serve_snapshot(peer, env["height"], now_ms)
            return
        if kind == "decision":
            self._on_decision(env["block"], env["commit"], now_ms)
            return
        if digest in self._seen or digest in self._future_seen:
            return
        msg = env["proposal"] if kind == "proposal" else env["vote"]
        check_signed(msg, self.chain_id)
        if ("proposer" in msg) != (kind == "proposal"):
            raise MsgError("malformed", "message kind")
        height = msg["height"]
        if height < self.height:
            # the peer itself is behind (a relay of an old message is not)
            # (and asks for a snapshot itself when one would spare it many blocks, §8.4)
            if signer_of(msg) == peer and not self._snapshot_helps(height, self.height) \
                    and self._peer_stuck(peer, height, now_ms):
                self._serve(peer, height, now_ms)
            return
        if height > self.height:
            self._request_sync(peer, height, now_ms)
            if height == self.height + 1 and len(self._future) < self.config.future_buffer_per_validator * len(self.validators):
                self._future.append((peer, env, data, digest))
                self._future_seen.add(digest)
            return
        self._seen[digest] = signer_of(msg)
        if kind == "proposal":
            stored = self._store_proposal(msg, env["block"], data)
            self._store_pol(msg, env["pol"])
        else:
            stored = self._store_vote(msg)
            if stored:
                self._relay(peer, msg["validator"], data, digest)   # proposals are passed on in _retransmit
        if stored:
            if self.step == NEW_HEIGHT:
                self._start_round(0, now_ms)

    def _relay(self, peer: str, signer: str, data: bytes, digest: str) -> None:
        """§6.4: pass a vote on, to `relay_fanout` validators other than its signer and the peer it
        came from, chosen by its digest so the load spreads. Its signer sent it to everyone
        already; relays carry it across a broken link and let some honest node see both halves
        of an equivocation, and relaying it to all would cost n² messages per vote."""
        others = [v for v in self.validators.order if v not in (peer, signer)
                  and v != (self.privval.pubkey if self.privval else None)]
        if len(others) <= self.config.relay_fanout:
            self.out.append(Broadcast(data, exclude=peer))
            return
        start = int(digest[:8], 16) % len(others)
        self.out.extend(Send(v, data) for v in (others + others)[start:start + self.config.relay_fanout])

    def _admit_round(self, validator: str, round_: int) -> bool:
        """Memory bound (§6.4): at most `far_rounds_per_validator` rounds beyond round + 1 per validator."""
        if round_ <= self.round + 1:
            return True
        far = self._far.setdefault(validator, set())
        if round_ in far:
            return True
        if len(far) >= self.config.far_rounds_per_validator:
            lowest = min(far)
            if round_ < lowest:
                return False
            far.discard(lowest)
            for (r, _), by_validator in self.votes.items():
                if r == lowest:
                    by_validator.pop(validator, None)
            self._powers.clear()
            self._round_senders.get(lowest, set()).discard(validator)
            if self.proposals.get(lowest, {}).get("proposer") == validator:
                del self.proposals[lowest]
                del self._proposal_msgs[lowest]
        far.add(round_)
        return True

    def _store_proposal(self, proposal: dict, block, data: bytes) -> bool:
        proposer, round_ = proposal["proposer"], proposal["round"]
        if proposer not in self.validators:
            raise MsgError("not_validator")
        if proposer != self.validators.proposer(self.height, round_):
            raise MsgError("wrong_proposer")
        if block_hash(block) != proposal["block_hash"]:
            raise MsgError("invalid_block", "hash")
        existing = self.proposals.get(round_)
        if existing is not None:
            if existing != proposal:
                self._equivocation(existing, proposal)
            return False
        if not self._admit_round(proposer, round_):
            return False
        self.proposals[round_] = proposal
        self._proposal_msgs[round_] = data
        self.blocks.setdefault(proposal["block_hash"], block)
        self._round_senders.setdefault(round_, set()).add(proposer)
        return True

    def _store_vote(self, vote: dict, in_pol: bool = False) -> bool:
        """First vote per (validator, round, type) counts; a different second one is evidence.
        Inside a proof-of-lock the other version counts too, as in [TM], where every received
        message is in the log: otherwise an equivocator's vote in one honest node's lock quorum
        could keep the others from ever accepting that lock's proof (a livelock)."""
        validator, round_ = vote["validator"], vote["round"]
        if validator not in self.validators:
            raise MsgError("not_validator")
        mine = self.votes.setdefault((round_, vote["type"]), {}).get(validator)
        if mine is not None:
            if vote["block_hash"] in mine:
                return False
            self._equivocation(next(iter(mine.values())), vote)
            if not in_pol:
                return False
        if not self._admit_round(validator, round_):
            return False
        self.votes[(round_, vote["type"])].setdefault(validator, {})[vote["block_hash"]] = vote
        self._powers.clear()
        self._round_senders.setdefault(round_, set()).add(validator)
        return True

    def _store_pol(self, proposal: dict, pol) -> None:
        """The prevotes a proposal carries for its pol_round (at most one per validator)."""
        if proposal["pol_round"] < 0 or self.proposals.get(proposal["round"]) != proposal:
            return
        signers = set()
        for vote in pol[:len(self.validators)]:
            check_signed(vote, self.chain_id)
            if (vote.get("type") != "prevote" or vote["height"] != self.height or vote["validator"] in signers
                    or vote["round"] != proposal["pol_round"] or vote["block_hash"] != proposal["block_hash"]):
                raise MsgError("invalid_pol")
            signers.add(vote["validator"])
            self._store_vote(vote, in_pol=True)

    def _equivocation(self, a: dict, b: dict) -> None:
        """§7.1: the second message never counts; the pair becomes evidence."""
        self.app.on_evidence(make_evidence(a, b))

    # -- catch-up (§8.3) ------------------------------------------------------------------------
    def _request_sync(self, peer: str, seen_height: int, now_ms: int) -> None:
        """Ask `peer`, which is at `seen_height`, for what this node lacks: its newest snapshot
        when that would spare replaying at least snapshot_sync_min_heights blocks (§8.4), and
        blocks (§8.3) if none came within snapshot_wait_ms, or when no snapshot would help."""
        if peer is None or now_ms - self._last_sync_ms.get(peer, -10**12) < self.config.retransmit_ms:
            return
        self._last_sync_ms[peer] = now_ms
        if self._snapshot_helps(self.height, seen_height):
            waited_ms = now_ms - self._snapshot_asked_ms
            if waited_ms >= 2 * self.config.snapshot_wait_ms:
                self._snapshot_asked_ms, self.snapshot_peer = now_ms, peer
                self.out.append(Send(peer, snapshot_request_msg(self.height)))
                return
            if waited_ms < self.config.snapshot_wait_ms:
                return        # one is on its way: blocks replayed meanwhile would be wasted
        self.out.append(Send(peer, sync_request_msg(self.height)))

    def _snapshot_helps(self, behind: int, ahead: int) -> bool:
        """Whether a node at height `behind` is spared snapshot_sync_min_heights blocks by the
        newest snapshot a node at height `ahead` can have (§5.3: one every interval)."""
        interval = self.snapshot_interval_heights
        return interval > 0 and (ahead - 1) // interval * interval - (behind - 1) >= self.config.snapshot_sync_min_heights

    def _serve_snapshot(self, peer: str, height: int, now_ms: int) -> None:
        """A snapshot above the peer's final height `height - 1`, or blocks when the service has
        none (at most once per snapshot_wait_ms per peer: a snapshot is large)."""
        if peer is None or not 1 <= height < self.height:
            return
        if now_ms - self._last_snapshot_serve.get(peer, -10**12) < self.config.snapshot_wait_ms:
            return
        self._last_snapshot_serve[peer] = now_ms
        self.out.append(ServeSnapshot(peer, height - 1, height, self.config.serve_max_blocks))

    def jump(self, height: int, validators: ValidatorSet, peer: str, now_ms: int) -> list:
        """The app installed a snapshot of height - 1 (§8.4): go on from `height`, and ask `peer`,
        which served it, for the blocks since."""
        self._enter(height, validators, (), now_ms)
        self.out.append(Send(peer, sync_request_msg(height)))
        return self._finish(now_ms)

    def _peer_stuck(self, peer: str, height: int, now_ms: int) -> bool:
        """§8.3: a peer one height behind is usually about to commit that height itself (serving
        it the block would cost both a block's transfer and decoding for nothing): serve it when
        its own messages still come from that height a retransmit period later, or when it is
        further behind."""
        if height < self.height - 1:
            return True
        seen = self._peer_behind.get(peer)
        if seen is None or seen[0] != height:
            self._peer_behind[peer] = (height, now_ms)
            return False
        return now_ms - seen[1] >= self.config.retransmit_ms

    def _serve(self, peer: str, from_height: int, now_ms: int) -> None:
        if peer is None or not 1 <= from_height < self.height:
            return
        last = self._last_serve.get(peer)
        if last and last[0] == from_height and now_ms - last[1] < self.config.retransmit_ms:
            return
        self._last_serve[peer] = (from_height, now_ms)
        self.out.append(ServeBlocks(peer, from_height, self.config.serve_max_blocks))

    def _on_decision(self, block, commit, now_ms: int) -> None:
        bhash = block_hash(block)
        height = block["header"].get("height") if bhash else None
        if type(height) is not int:
            raise MsgError("malformed", "decision")
        if height < self.height:
            return
        if height > self.height:
            if height <= self.height + self.config.decision_buffer_heights:
                self._decisions.setdefault(height, (block, commit))
            return
        verify_commit(block, commit, self.validators, self.chain_id)
        error = self.app.block_error(block)
        if error:
            self.out.append(Halt(f"final block {height} fails here: {error}"))
            return
        self.blocks[bhash] = block
        self._commit(block, sorted(commit, key=lambda v: v["validator"]), now_ms)

    # -- the rules ------------------------------------------------------------------------------
    def _maybe_start(self, now_ms: int) -> None:
        """Block period and empty-block policy (§6.4) before round 0."""
        if self.step != NEW_HEIGHT:
            return
        parent_ms = self.app.last_block_time_ms()
        due_ms = parent_ms + self.config.block_period_ms
        if not self.app.has_work():
            due_ms = max(due_ms, parent_ms + self.config.empty_block_interval_ms)
        if now_ms >= due_ms:
            self._start_round(0, now_ms)
        elif self._start_at_ms != due_ms:
            self._start_at_ms = due_ms
            self._schedule("start", 0, due_ms)

    def _start_round(self, round_: int, now_ms: int) -> None:
        """[TM] 11–21."""
        self.round, self.step = round_, PROPOSE
        for far in self._far.values():
            far.difference_update(range(round_ + 2))
        self._schedule("propose", round_, now_ms + self.config.timeout_ms("propose", round_))
        self._schedule("retransmit", round_, now_ms + self.config.retransmit_ms)
        if not self.is_validator or self.validators.proposer(self.height, round_) != self.privval.pubkey:
            return
        if self.valid_block is not None:
            block, pol_round = self.valid_block, self.valid_round
        else:
            block, pol_round = self.app.propose_block(self.height, now_ms), -1
        bhash = hash_value(block["header"])
        proposal, record = self.privval.sign({"chain_id": self.chain_id, "height": self.height, "round": round_,
                                              "pol_round": pol_round, "block_hash": bhash,
                                              "proposer": self.privval.pubkey})
        if proposal is None or proposal["block_hash"] != bhash:
            return     # signed something else here before a restart; that block is not at hand
        if record is not None:
            self.out.append(PersistSigned(record))
        # [TM] relies on gossip delivering the prevotes of pol_round to everyone; across a
        # partition they may be lost, so the proposal carries its proof-of-lock along.
        data = proposal_msg(proposal, block, self._pol(pol_round, bhash) if pol_round >= 0 else [])
        self._store_proposal(proposal, block, data)
        self.out.append(Broadcast(data))

    def _retransmit(self) -> None:
        """§6.4: own votes of this round to everyone, and this round's proposal, own or received,
        to the validators that have not voted for its block: the others have it already, and it
        carries a whole block. This is also how a proposal is passed on (relayed)."""
        self.out.extend(Broadcast(data) for data in self._own.get(self.round, ()))
        proposal = self.proposals.get(self.round)
        if proposal is None:
            return
        bhash = proposal["block_hash"]
        have = {v for vote_type in ("prevote", "precommit")
                for v, by_hash in self.votes.get((self.round, vote_type), {}).items() if bhash in by_hash}
        have.update((proposal["proposer"], self.privval.pubkey if self.privval else None))
        data = self._proposal_msgs[self.round]
        self.out.extend(Send(v, data) for v in self.validators.order if v not in have)

    def _pol(self, round_: int, bhash: str) -> list[dict]:
        """The prevotes for `bhash` in `round_` (a proof-of-lock once they form a quorum)."""
        votes = self.votes.get((round_, "prevote"), {})
        return [votes[v][bhash] for v in sorted(votes) if bhash in votes[v]]

    def _vote(self, vote_type: str, bhash: str, lock_block: dict | None = None, lock_pol: list[dict] = ()) -> None:
        if not self.is_validator:
            return
        vote, record = self.privval.sign({"chain_id": self.chain_id, "type": vote_type, "height": self.height,
                                          "round": self.round, "block_hash": bhash,
                                          "validator": self.privval.pubkey}, lock_block, lock_pol)
        if vote is None:
            return
        if record is not None:
            self.out.append(PersistSigned(record))
        data = vote_msg(vote)
        self._store_vote(vote)
        self._own.setdefault(self.round, []).append(data)
        self.out.append(Broadcast(data))

    def _power(self, round_: int, vote_type: str, bhash: str | None = None) -> int:
        """Memoised until the next vote is stored: `_advance` asks the same questions over and
        over, and each answer walks every validator's votes."""
        key = (round_, vote_type, bhash)
        power = self._powers.get(key)
        if power is None:
            votes = self.votes.get((round_, vote_type), {})
            power = self._powers[key] = self.validators.power_of(
                v for v, by_hash in votes.items() if bhash is None or bhash in by_hash)
        return power

    def _valid(self, bhash: str) -> bool:
        block = self.blocks.get(bhash)
        return block is not None and self.app.block_error(block) is None

    def _timely(self, bhash: str, now_ms: int) -> bool:
        """§6.6: only prevotes look at the local clock."""
        return self.blocks[bhash]["header"]["time_ms"] <= now_ms + self.config.max_clock_skew_ms

    def _advance(self, now_ms: int) -> None:
        while self._try_decide(now_ms) or self._try_skip(now_ms) or self._try_round(now_ms):
            pass

    def _try_decide(self, now_ms: int) -> bool:
        """[TM] 49–54, in any round; the block may come from any proposal with that hash."""
        for (round_, vote_type), votes in list(self.votes.items()):
            if vote_type != "precommit":
                continue
            for bhash in sorted({h for by_hash in votes.values() for h in by_hash} - {NIL}):
                if self.validators.is_quorum(self._power(round_, "precommit", bhash)) and self._valid(bhash):
                    commit = [votes[v][bhash] for v in sorted(votes) if bhash in votes[v]]
                    self._commit(self.blocks[bhash], commit, now_ms)
                    return True
        return False

    def _commit(self, block: dict, commit: list[dict], now_ms: int) -> None:
        height = self.height
        self.out.append(CommitBlock(height, block, commit))     # durable before anything of h + 1
        validators = self.app.finalize(block, commit, now_ms)
        self._enter(height + 1, validators, self._future, now_ms)

    def _enter(self, height: int, validators: ValidatorSet, replay, now_ms: int) -> None:
        """Start `height`: replay the messages buffered for it, and a decision that came early."""
        self._reset_height(height, validators)
        self._inbox.extend(replay)
        pending = self._decisions.pop(height, None)
        self._decisions = {h: d for h, d in self._decisions.items() if h > height}
        if pending is not None:
            self._inbox.append((None, {"kind": "decision", "block": pending[0], "commit": pending[1]},
                                decision_msg(*pending), ""))
        self._maybe_start(now_ms)

    def _try_skip(self, now_ms: int) -> bool:
        """[TM] 55–56: one third+ of power is already in a later round."""
        ahead = [r for r, senders in self._round_senders.items()
                 if r > self.round and self.validators.is_one_third(self.validators.power_of(senders))]
        if not ahead:
            return False
        self._start_round(max(ahead), now_ms)
        return True

    def _try_round(self, now_ms: int) -> bool:
        if self.step == NEW_HEIGHT:
            return False
        r = self.round
        proposal = self.proposals.get(r)
        if self.step == PROPOSE and proposal is not None:
            bhash, vr = proposal["block_hash"], proposal["pol_round"]
            if vr == -1:                                                     # [TM] 22–27
                ok = self.locked_round == -1 or self.locked_hash == bhash
            elif self.validators.is_quorum(self._power(vr, "prevote", bhash)):   # [TM] 28–33
                ok = self.locked_round <= vr or self.locked_hash == bhash
            else:
                ok = None
            if ok is not None:
                ok = ok and self._valid(bhash) and self._timely(bhash, now_ms)
                self._vote("prevote", bhash if ok else NIL)
                self.step = PREVOTE
                return True
        if (proposal is not None and self.step >= PREVOTE and ("lock", r) not in self._fired
                and self.validators.is_quorum(self._power(r, "prevote", proposal["block_hash"]))
                and self._valid(proposal["block_hash"])):                   # [TM] 36–43
            self._fired.add(("lock", r))
            bhash = proposal["block_hash"]
            block = self.blocks[bhash]
            if self.step == PREVOTE:
                self.locked_round, self.locked_hash, self.locked_block = r, bhash, block
                self._vote("precommit", bhash, lock_block=block, lock_pol=self._pol(r, bhash))
                self.step = PRECOMMIT
            self.valid_round, self.valid_block = r, block
            return True
        if self.step == PREVOTE and self.validators.is_quorum(self._power(r, "prevote", NIL)):   # [TM] 44–46
            self._vote("precommit", NIL)
            self.step = PRECOMMIT
            return True
        if (self.step == PREVOTE and ("prevote_any", r) not in self._fired
                and self.validators.is_quorum(self._power(r, "prevote"))):   # [TM] 34–35
            self._fired.add(("prevote_any", r))
            self._schedule("prevote", r, now_ms + self.config.timeout_ms("prevote", r))
        if ("precommit_any", r) not in self._fired and self.validators.is_quorum(self._power(r, "precommit")):  # [TM] 47–48
            self._fired.add(("precommit_any", r))
            self._schedule("precommit", r, now_ms + self.config.timeout_ms("precommit", r))
        return False
