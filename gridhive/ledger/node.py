"""A ledger node: consensus + state + mempool + evidence pool behind one pure interface
(LEDGER.md §12). A service (or `sim.py`) feeds it bytes, timers and the local clock and executes
the returned actions in order."""
from collections import Counter
from dataclasses import dataclass, field

from .actions import Broadcast, InstallSnapshot
from .codec import digest, hash_value
from .consensus import STEP_NAMES, App, Consensus, ConsensusConfig, block_hash
from .crypto import SigningKey
from .evidence import EvidencePool
from .mempool import Mempool, MempoolConfig
from .messages import TX_MSG_PREFIX, MsgError, block_bytes, parse, parse_tx_msg, tx_msg
from .privval import PrivValidator
from .rules import MarketRules
from .snapshot import Assembly, SnapshotError, verify
from .state import BlockError, PendingBlock, State
from .tx import TxError, check_tx_sized, make_tx
from .valset import ValidatorSet

BLOCK_BYTES_KEPT = 8                 # blocks of one height (a proposal per round, decisions)


@dataclass(frozen=True)
class NodeConfig:
    consensus: ConsensusConfig = field(default_factory=ConsensusConfig)
    mempool: MempoolConfig = field(default_factory=MempoolConfig)
    auto_vote_evidence: bool = True     # §7.2: vote to remove validators with recorded evidence


class Node(App):
    """One validator (or follower when `key` is None)."""

    def __init__(self, genesis: dict, key: SigningKey | None, rules: MarketRules, config: NodeConfig = NodeConfig(),
                 blocks=(), signed_record: dict | None = None, snapshot: tuple[dict, dict] | None = None):
        """Rebuild from persisted data (§8.2): optional (snapshot, its final header), the stored
        blocks after it in order, and the last-signed record."""
        self.config = config
        self.key = key
        self._genesis, self._rules = genesis, rules        # to verify snapshots from peers (§8.4)
        self._snapshot: Assembly | None = None
        self.state = State.from_snapshot(genesis, rules, *snapshot) if snapshot else State(genesis, rules)
        for block in blocks:
            self.state.commit(self.state.execute(block, decoded=True))
        self.chain_id = self.state.chain_id
        self.max_msg_bytes = self.state.params["max_block_bytes"] + 65_536
        self.mempool = Mempool(config.mempool)
        self.evidence = EvidencePool(self.chain_id)
        self.rejections: Counter = Counter()
        # digest -> tx id of tx messages admitted or sent here: while the tx is pending, the copies
        # gossip brings back are dropped before they are parsed (bounded, oldest first out)
        self._gossip_seen: dict[str, str] = {}
        self._gossip_seen_max = 2 * config.mempool.max_txs
        self._exec: dict[str, PendingBlock | str] = {}
        # block hash -> (height, canonical bytes) of blocks that came in proposals or decisions
        # (bounded): executing and storing them reuses these instead of encoding their txs again
        self._block_bytes: dict[str, tuple[int, bytes]] = {}
        self.final_tx_ids: dict[int, list[str]] = {}     # the ids of recent final blocks' txs, for a service to index
        self._out: list = []
        privval = PrivValidator(key, signed_record) if key else None
        self.consensus = Consensus(self.chain_id, config.consensus, self, privval, self.state.height + 1,
                                   self.state.validators(), self.state.params["snapshot_interval_heights"])

    # -- entry points ---------------------------------------------------------------------------
    def start(self, now_ms: int) -> list:
        return self._collect(self.consensus.start(now_ms))

    def on_message(self, peer: str, data: bytes, now_ms: int) -> list:
        msg_digest = digest(data)
        if self._gossip_seen.get(msg_digest) in self.mempool:
            return []          # a copy of a pending tx: hashing is all it costs
        copy_actions = self.consensus.on_copy(peer, msg_digest, now_ms)
        if copy_actions is not None:
            return self._collect(copy_actions)
        try:
            if data.startswith(TX_MSG_PREFIX):
                tx, raw = parse_tx_msg(data, self.max_msg_bytes)
                if self._nonce_used(tx):     # §9: under load, gossip often brings a tx after its block
                    self.reject("nonce_too_low")
                    return []
                self._admit(tx, peer, now_ms, gossip=(data, msg_digest), raw=raw)
                return self._collect([])
            env = parse(data, self.max_msg_bytes)
        except MsgError as exc:
            self.reject(exc.reason)
            return []
        if env["kind"] == "snapshot_chunk":
            return self._collect(self._on_snapshot_chunk(peer, env, now_ms))
        if env["kind"] in ("proposal", "decision"):
            self._remember_block_bytes(env, data)
        return self._collect(self.consensus.on_envelope(peer, env, data, msg_digest, now_ms))

    def on_timer(self, timer: tuple, now_ms: int) -> list:
        return self._collect(self.consensus.on_timer(timer, now_ms))

    def submit_tx(self, tx: dict, now_ms: int) -> tuple[str | None, list]:
        """A client's transaction: (None, actions) if admitted to the mempool, else (reason, [])."""
        reason = self._admit(tx, None, now_ms)
        return reason, self._collect([])

    def _on_snapshot_chunk(self, peer: str, env: dict, now_ms: int) -> list:
        """§8.4: chunks from the peer this node asked, of a snapshot above its height. Once all
        are in and the snapshot verifies against its final header, the node jumps to it."""
        header = env["header"]
        if peer != self.consensus.snapshot_peer or type(header.get("height")) is not int \
                or header["height"] <= self.state.height:
            return []                                   # unasked, or overtaken by blocks: redundancy
        assembly = self._snapshot
        try:
            if assembly is None or assembly.total != env["total"] or assembly.block_hash != hash_value(header):
                assembly = self._snapshot = Assembly(header, env["commit"], env["total"])
            if not assembly.add(env["index"], env["data"]):
                return []
            self._snapshot = None
            data = assembly.snapshot_bytes()
            state = verify(self._genesis, self._rules, self.consensus.validators, header, assembly.commit, data)
        except SnapshotError:
            self._snapshot = None
            self.reject("bad_snapshot")
            return []
        self.state = state
        self._exec.clear()
        self.mempool.update(state.nonce_of, now_ms)
        self._prune_evidence()
        return [InstallSnapshot(header, assembly.commit, data),          # durable before anything after it
                *self.consensus.jump(state.height + 1, state.validators(), peer, now_ms)]

    @property
    def height(self) -> int:
        """Height of the last final block."""
        return self.state.height

    def status(self) -> dict:
        """What `gridhive ctl ledger status` shows (peers are the service's to add)."""
        c = self.consensus
        return {"height": self.state.height, "last_block_hash": self.state.last_block_hash,
                "last_block_time_ms": self.state.last_block_time_ms, "app_hash": self.state.app_hash,
                "consensus": {"height": c.height, "round": c.round, "step": STEP_NAMES[c.step],
                              "locked_round": c.locked_round},
                "validators": [[pk, c.validators.powers[pk]] for pk in c.validators.order],
                "is_validator": c.is_validator, "mempool_txs": len(self.mempool),
                "pending_evidence": len(self.evidence), "rejections": dict(self.rejections)}

    def _collect(self, actions: list) -> list:
        if self._out:
            actions, self._out = actions + self._out, []
        return actions

    def _nonce_used(self, tx) -> bool:
        """A gossiped tx whose nonce its account has used can never apply: refused before the
        costly checks (its signature) that would refuse it all the same."""
        return (type(tx) is dict and type(tx.get("sender")) is str and type(tx.get("nonce")) is int
                and tx["nonce"] < self.state.nonce_of(tx["sender"]))

    def _admit(self, tx, peer: str | None, now_ms: int, wake_consensus: bool = True,
               gossip: tuple[bytes, str] | None = None, raw: bytes | None = None) -> str | None:
        """`gossip`: (bytes, digest) of the envelope the tx came in, relayed as they are; `raw`:
        the tx's own bytes in it."""
        try:
            if len(self.mempool) >= self.config.mempool.max_txs:     # refused before its costly checks
                raise TxError("mempool_full")
            tid, size, tx_bytes = check_tx_sized(tx, self.chain_id, self.state.params["max_tx_bytes"], raw=raw)
            if not self.state.is_authorized(self.state, tx):
                raise TxError("unauthorized")
            self.mempool.add(tx, tid, self.state.nonce_of(tx["sender"]), now_ms, size_bytes=size)
        except TxError as exc:
            if not (peer is not None and exc.reason == "duplicate"):     # gossip echoes are not rejections
                self.reject(exc.reason)
            return exc.reason
        data, data_digest = gossip or (tx_msg(tx, tx_bytes), None)
        self._gossip_seen[data_digest or digest(data)] = tid
        if len(self._gossip_seen) > self._gossip_seen_max:
            del self._gossip_seen[next(iter(self._gossip_seen))]
        if peer is None or peer not in self.consensus.validators:
            # §9: validators are fully meshed (§13.4), so the node a tx entered through sends it to
            # all of them and they do not relay it again (which would cost n − 1 copies per node)
            self._out.append(Broadcast(data, exclude=peer))
        if wake_consensus:
            self._out.extend(self.consensus.on_work(now_ms))
        return None

    # -- the App protocol used by consensus ----------------------------------------------------
    def reject(self, reason: str) -> None:
        self.rejections[reason] += 1

    def has_work(self) -> bool:
        return len(self.evidence) > 0 or self.mempool.has_ready(self.state.nonce_of)

    def last_block_time_ms(self) -> int:
        return self.state.last_block_time_ms

    def on_evidence(self, evidence: dict) -> None:
        try:
            self.evidence.add(evidence)
        except MsgError as exc:
            self.reject(exc.reason)

    def propose_block(self, height: int, now_ms: int) -> dict:
        pending = self.state.build(max(now_ms, self.state.last_block_time_ms + 1), self.key.public_hex)
        full = False
        room = self.config.mempool.max_txs_per_proposal
        for run in self.mempool.runs(self.state.nonce_of):
            for tid, tx in run:
                if len(pending.txs) >= room:
                    full = True
                    break
                try:
                    pending.add_tx(tx, decoded=True, checked=self.mempool.checked)   # admitted by check_tx already
                except TxError as exc:
                    if exc.reason == "block_full":
                        full = True
                    else:
                        self.mempool.remove(tid)
                        self.reject(exc.reason)
                    break
            if full:
                break
        for ev in self.evidence.pending(self.state.params["max_evidence_per_block"]):
            try:
                pending.add_evidence(ev)
            except (TxError, MsgError) as exc:       # moot now (e.g. offender already removed): forget it
                self.reject(exc.reason)
                bad_id = hash_value(ev)
                self.evidence.prune(lambda info: info.id != bad_id)
        block = pending.seal()
        self._exec[block_hash(block)] = pending
        return block

    def _remember_block_bytes(self, env: dict, data: bytes) -> None:
        bhash, found = block_hash(env["block"]), block_bytes(env, data)
        height = env["block"]["header"].get("height") if bhash is not None else None
        if type(height) is int and found is not None:
            self._block_bytes[bhash] = (height, found)
            if len(self._block_bytes) > BLOCK_BYTES_KEPT:
                del self._block_bytes[next(iter(self._block_bytes))]

    def block_bytes(self, bhash: str) -> bytes | None:
        """The canonical bytes of a block this node received, if still at hand (for the store)."""
        kept = self._block_bytes.get(bhash)
        return kept[1] if kept else None

    def block_error(self, block: dict) -> str | None:
        bhash = block_hash(block)
        result = self._exec.get(bhash)
        if result is None:
            try:
                result = self.state.execute(block, decoded=True, checked=self.mempool.checked,   # out of `parse`
                                            block_bytes=self.block_bytes(bhash))
            except BlockError as exc:
                self.reject("invalid_block")
                result = exc.reason
            self._exec[bhash] = result
        return None if isinstance(result, PendingBlock) else result

    def finalize(self, block: dict, commit: list[dict], now_ms: int) -> ValidatorSet:
        bhash = block_hash(block)
        pending = self._exec[bhash]
        # this block's until the next commit (the service stores it), and those of later heights
        self._block_bytes = {h: kept for h, kept in self._block_bytes.items()
                             if h == bhash or kept[0] > pending.height}
        self.state.commit(pending)
        self.final_tx_ids[pending.height] = pending.tx_ids
        if len(self.final_tx_ids) > 16:
            del self.final_tx_ids[min(self.final_tx_ids)]
        self._exec.clear()
        self.mempool.update(self.state.nonce_of, now_ms)
        self._prune_evidence()
        if self.config.auto_vote_evidence:
            self._vote_out_offenders(now_ms)
        return self.state.validators()

    def _prune_evidence(self) -> None:
        """Forget evidence that is on chain, about a validator no more, or too old (§7.2)."""
        s = self.state
        self.evidence.prune(lambda info: s.get("evidence", info.key) is None and s.get("validators", info.offender)
                            and s.height + 1 - info.height <= s.params["evidence_max_age_heights"])

    def _vote_out_offenders(self, now_ms: int) -> None:
        me = self.key.public_hex if self.key else None
        if me not in self.state.validators():
            return
        for slot, prop in sorted(self.state.tables["vproposals"].items()):
            target = slot.partition(":")[2]
            if not slot.startswith("remove:") or not prop["evidence"] or me in prop["voters"] or target == me:
                continue
            nonce = self.mempool.next_nonce(me, self.state.nonce_of(me))
            tx = make_tx(self.key, self.chain_id, "validator_vote", nonce,
                         {"action": "remove", "validator": target, "power": 0})
            pending_same = any(t["body"] == tx["body"] for run in self.mempool.runs(self.state.nonce_of)
                               for _, t in run if t["sender"] == me)
            if not pending_same:     # called from inside consensus: no re-entry, it looks at work itself next
                self._admit(tx, None, now_ms, wake_consensus=False)
