"""A seeded discrete-event simulation of n validators (LEDGER.md §12): the nodes are the real
pure core; the network drops, delays and reorders; partitions, crashes at any action
boundary, clock skew and a Byzantine equivocator are scripted. Every run with one seed is
identical, and the result carries the safety and liveness figures tests assert on."""
import heapq
import random
from collections import Counter
from dataclasses import dataclass, field

from gridhive.market.contract import MarketContract

from .actions import Broadcast, CommitBlock, Halt, PersistSigned, Schedule, Send, ServeBlocks
from .codec import decode, digest
from .consensus import ConsensusConfig, block_hash
from .crypto import SigningKey
from .messages import NIL, decision_msg, proposal_msg, sign_bytes, sign_with, step_of, vote_msg
from .node import Node, NodeConfig
from .tx import make_tx, tx_id


@dataclass(frozen=True)
class NetConfig:
    drop_p: float = 0.0
    delay_min_ms: int = 5
    delay_max_ms: int = 50


@dataclass(frozen=True)
class SimConfig:
    n: int = 4
    seed: int = 0
    duration_ms: int = 15_000
    net: NetConfig = NetConfig()
    consensus: ConsensusConfig = ConsensusConfig(empty_block_interval_ms=1_000)
    skew_ms: tuple[int, ...] = ()        # per node local-clock offset; () = none
    byzantine: tuple[int, ...] = ()      # equivocating validators
    clients: int = 3
    tx_every_ms: int = 200               # 0: no workload
    replay_every: int = 5                # every k-th workload tick re-submits a committed tx


@dataclass
class Disk:
    """What survives a crash: final blocks and the last-signed record."""
    blocks: list = field(default_factory=list)
    record: dict | None = None


@dataclass
class SimNode:
    idx: int
    key: SigningKey
    skew_ms: int
    disk: Disk = field(default_factory=Disk)
    node: Node | None = None
    incarnation: int = 0
    kill_after: int | None = None
    restarts: int = 0


@dataclass
class SimResult:
    heights: list[int]                    # final height per node
    commit_hashes: dict[int, set]         # height -> block hashes committed anywhere
    forks: list[int]                      # heights with more than one committed hash
    double_signs: list[tuple]             # honest (validator, h, r, step) signed twice differently
    lost_blocks: list[tuple]              # (node, height before crash, height after restart)
    first_commit_ms: dict[int, int]       # height -> sim time of first commit
    block_time_ms: dict[int, int]         # height -> header time_ms of the committed block
    messages_sent: int
    messages_dropped: int
    bytes_sent: int
    max_round: int
    evidence_keys: list[str]
    validators_final: list[str]
    txs_committed: int
    duplicate_txs: list[str]
    replays_rejected: int
    replays_admitted: int
    rejections: Counter
    halts: list[str]
    restarts: int

    def height_at(self, t_ms: int) -> int:
        return max((h for h, t in self.first_commit_ms.items() if t <= t_ms), default=0)


class Simulation:
    def __init__(self, config: SimConfig):
        self.config = config
        self.rng = random.Random(config.seed)
        self.now_ms = 0
        self._events: list = []
        self._seq = 0
        keys = [SigningKey.derive(f"sim/{config.seed}/validator/{i}") for i in range(config.n)]
        skews = config.skew_ms or (0,) * config.n
        self.nodes = [SimNode(i, k, skews[i]) for i, k in enumerate(keys)]
        self.index = {k.public_hex: i for i, k in enumerate(keys)}
        self.operator = SigningKey.derive(f"sim/{config.seed}/operator")
        self.clients = [SigningKey.derive(f"sim/{config.seed}/client/{i}") for i in range(config.clients)]
        gateway = SigningKey.derive(f"sim/{config.seed}/gateway")
        self.genesis = {
            "chain_id": f"sim-{config.seed}", "genesis_time_ms": 0, "operator": self.operator.public_hex,
            "validators": {k.public_hex: 1 for k in keys},
            "accounts": {c.public_hex: 1_000_000 for c in self.clients},
            "members": {f"h{i}": {"key": c.public_hex, "gateway": gateway.public_hex, "role": "prosumer"}
                        for i, c in enumerate(self.clients)},
        }
        self.node_config = NodeConfig(consensus=config.consensus)
        self.partitions: list[tuple[int, int, list[set[int]]]] = []
        self.commit_hashes: dict[int, set] = {}
        self.first_commit_ms: dict[int, int] = {}
        self.block_time_ms: dict[int, int] = {}
        self.signed: dict[tuple, set] = {}
        self.lost_blocks: list[tuple] = []
        self.halts: list[str] = []
        self.sent = self.dropped = self.bytes = 0
        self.max_round = 0
        self.rejections: Counter = Counter()
        self.replays_rejected = self.replays_admitted = 0
        self._committed_txs: list[dict] = []
        self._client_last: dict[int, tuple[int, int]] = {}
        self._ticks = 0

    # -- scripting ------------------------------------------------------------------------------
    def _push(self, at_ms: int, kind: str, *payload) -> None:
        self._seq += 1
        heapq.heappush(self._events, (at_ms, self._seq, kind, payload))

    def at(self, at_ms: int, fn) -> None:
        self._push(at_ms, "call", fn)

    def partition(self, start_ms: int, end_ms: int, groups: list[set[int]]) -> None:
        """Messages between different groups are lost while start <= t < end (in flight too)."""
        self.partitions.append((start_ms, end_ms, groups))

    def crash(self, i: int, at_ms: int, down_ms: int | None) -> None:
        """SIGKILL node i at a random action boundary at/after at_ms; restart after down_ms (None: stays down)."""
        def kill():
            sn = self.nodes[i]
            if sn.node is None:
                return
            sn.kill_after = self.rng.randint(0, 4)
            if sn.kill_after == 0:
                self._die(sn)
            self.at(self.now_ms + 50, lambda: self._die(sn))           # idle node: die anyway
            if down_ms is not None:
                self.at(self.now_ms + 50 + down_ms, lambda: self._restart(sn))
        self.at(at_ms, kill)

    # -- node lifecycle -------------------------------------------------------------------------
    def local_ms(self, sn: SimNode) -> int:
        return self.now_ms + sn.skew_ms

    def _boot(self, sn: SimNode) -> None:
        sn.node = Node(self.genesis, sn.key, MarketContract(), self.node_config,
                       blocks=[b for b, _ in sn.disk.blocks], signed_record=sn.disk.record)
        self._execute(sn, sn.node.start(self.local_ms(sn)))

    def _die(self, sn: SimNode) -> None:
        if sn.node is not None:
            self.rejections.update(sn.node.rejections)
            sn.node, sn.kill_after = None, None
            sn.incarnation += 1

    def _restart(self, sn: SimNode) -> None:
        if sn.node is not None:
            return
        before = len(sn.disk.blocks)
        sn.restarts += 1
        self._boot(sn)
        if sn.node is not None and sn.node.height < before:
            self.lost_blocks.append((sn.idx, before, sn.node.height))

    # -- network --------------------------------------------------------------------------------
    def _separated(self, a: int, b: int) -> bool:
        for start, end, groups in self.partitions:
            if start <= self.now_ms < end and not any(a in g and b in g for g in groups):
                return True
        return False

    def _send(self, src: int, dst: int, data: bytes) -> None:
        net = self.config.net
        self.sent += 1
        self.bytes += len(data)
        if self.rng.random() < net.drop_p:
            self.dropped += 1
            return
        self._push(self.now_ms + self.rng.randint(net.delay_min_ms, net.delay_max_ms), "deliver", src, dst, data)

    # -- executing actions ----------------------------------------------------------------------
    def _execute(self, sn: SimNode, actions: list) -> None:
        for action in actions:
            if sn.kill_after is not None:
                if sn.kill_after == 0:
                    self._die(sn)
                    return
                sn.kill_after -= 1
            if isinstance(action, Broadcast):
                self._broadcast(sn, action)
            elif isinstance(action, Send):
                self._send(sn.idx, self.index[action.peer], action.data)
            elif isinstance(action, Schedule):
                self._push(max(self.now_ms, action.at_ms - sn.skew_ms), "timer", sn.idx, sn.incarnation, action.timer)
                self.max_round = max(self.max_round, action.timer[2])
            elif isinstance(action, PersistSigned):
                sn.disk.record = action.record
                self._observe_signed(sn, action.record["msg"])
            elif isinstance(action, CommitBlock):
                self._observe_commit(sn, action)
            elif isinstance(action, ServeBlocks):
                for block, commit in sn.disk.blocks[action.from_height - 1:action.from_height - 1 + action.max_blocks]:
                    self._send(sn.idx, self.index[action.peer], decision_msg(block, commit))
            elif isinstance(action, Halt):
                self.halts.append(f"node {sn.idx}: {action.reason}")
                self._die(sn)
                return

    def _broadcast(self, sn: SimNode, action: Broadcast) -> None:
        targets = [j for j in range(self.config.n) if j != sn.idx and self.index.get(action.exclude) != j]
        if action.exclude is None and sn.idx in self.config.byzantine:
            conflicting = self._conflicting(sn, action.data)
            if conflicting is not None:
                half = len(targets) // 2
                for j in targets[:half]:
                    self._send(sn.idx, j, action.data)
                for j in targets[half:]:
                    self._send(sn.idx, j, conflicting)
                return
        for j in targets:
            self._send(sn.idx, j, action.data)

    def _conflicting(self, sn: SimNode, data: bytes) -> bytes | None:
        """The Byzantine twin of an own vote or proposal: same (h, r, step), different content."""
        env = decode(data, 1 << 30)
        if env["kind"] == "vote" and env["vote"]["validator"] == sn.key.public_hex:
            vote = {k: v for k, v in env["vote"].items() if k != "sig"}
            vote["block_hash"] = NIL if vote["block_hash"] else digest(b"equivocate" + data)
            return vote_msg(sign_with(sn.key, vote))
        if env["kind"] == "proposal" and env["proposal"]["proposer"] == sn.key.public_hex:
            block = env["block"]
            twin = {**block, "header": {**block["header"], "time_ms": block["header"]["time_ms"] + 1}}
            proposal = {k: v for k, v in env["proposal"].items() if k != "sig"}
            proposal["block_hash"] = block_hash(twin)
            return proposal_msg(sign_with(sn.key, proposal), twin)
        return None

    def _observe_signed(self, sn: SimNode, msg: dict) -> None:
        if sn.idx in self.config.byzantine:
            return
        where = (sn.key.public_hex, msg["height"], msg["round"], step_of(msg))
        self.signed.setdefault(where, set()).add(sign_bytes(msg))

    def _observe_commit(self, sn: SimNode, action: CommitBlock) -> None:
        if action.height != len(sn.disk.blocks) + 1:
            self.lost_blocks.append((sn.idx, len(sn.disk.blocks), action.height))
        sn.disk.blocks.append((action.block, action.commit))
        bhash = block_hash(action.block)
        hashes = self.commit_hashes.setdefault(action.height, set())
        if not hashes:
            self.first_commit_ms[action.height] = self.now_ms
            self.block_time_ms[action.height] = action.block["header"]["time_ms"]
            self._committed_txs.extend(action.block["txs"])
        hashes.add(bhash)

    # -- workload -------------------------------------------------------------------------------
    def _tick(self) -> None:
        """Clients send transfers (one outstanding tx each) and sometimes replay a committed one."""
        self._ticks += 1
        up = [sn for sn in self.nodes if sn.node is not None]
        if up:
            target = self.rng.choice(up)
            if self._committed_txs and self._ticks % self.config.replay_every == 0:
                reason, actions = target.node.submit_tx(self.rng.choice(self._committed_txs), self.local_ms(target))
                if reason is None:
                    self.replays_admitted += 1
                else:
                    self.replays_rejected += 1
                self._execute(target, actions)
            else:
                c = self.rng.randrange(len(self.clients))
                committed = max(sn.node.state.nonce_of(self.clients[c].public_hex) for sn in up)
                last = self._client_last.get(c)
                if last is None or committed > last[0] or self.now_ms - last[1] > 5_000:
                    to = self.clients[(c + 1) % len(self.clients)].public_hex
                    tx = make_tx(self.clients[c], self.genesis["chain_id"], "transfer", committed,
                                 {"to": to, "amount_minor": 1 + self.rng.randrange(100)})
                    self._client_last[c] = (committed, self.now_ms)
                    _, actions = target.node.submit_tx(tx, self.local_ms(target))
                    self._execute(target, actions)
        self.at(self.now_ms + self.config.tx_every_ms, self._tick)

    # -- main loop ------------------------------------------------------------------------------
    def run(self) -> SimResult:
        for sn in self.nodes:
            self._boot(sn)
        if self.config.tx_every_ms:
            self.at(self.config.tx_every_ms, self._tick)
        while self._events and self._events[0][0] <= self.config.duration_ms:
            self.now_ms, _, kind, payload = heapq.heappop(self._events)
            if kind == "call":
                payload[0]()
            elif kind == "timer":
                i, incarnation, timer = payload
                sn = self.nodes[i]
                if sn.node is not None and sn.incarnation == incarnation:
                    self._execute(sn, sn.node.on_timer(timer, self.local_ms(sn)))
            else:
                src, dst, data = payload
                sn = self.nodes[dst]
                if self._separated(src, dst):
                    self.dropped += 1
                elif sn.node is not None:
                    self._execute(sn, sn.node.on_message(self.nodes[src].key.public_hex, data, self.local_ms(sn)))
        return self._result()

    def _result(self) -> SimResult:
        live = [sn.node for sn in self.nodes if sn.node is not None]
        for node in live:
            self.rejections.update(node.rejections)
        ids = [tx_id(tx) for tx in self._committed_txs]
        best = max(live, key=lambda n: n.height) if live else None
        return SimResult(
            heights=[len(sn.disk.blocks) for sn in self.nodes],
            commit_hashes=self.commit_hashes,
            forks=sorted(h for h, hashes in self.commit_hashes.items() if len(hashes) > 1),
            double_signs=sorted(w for w, msgs in self.signed.items() if len(msgs) > 1),
            lost_blocks=self.lost_blocks,
            first_commit_ms=self.first_commit_ms, block_time_ms=self.block_time_ms,
            messages_sent=self.sent, messages_dropped=self.dropped, bytes_sent=self.bytes,
            max_round=self.max_round,
            evidence_keys=sorted(best.state.tables["evidence"]) if best else [],
            validators_final=sorted(best.state.validators().order) if best else [],
            txs_committed=len(ids),
            duplicate_txs=sorted(t for t, c in Counter(ids).items() if c > 1),
            replays_rejected=self.replays_rejected, replays_admitted=self.replays_admitted,
            rejections=self.rejections, halts=self.halts,
            restarts=sum(sn.restarts for sn in self.nodes))
