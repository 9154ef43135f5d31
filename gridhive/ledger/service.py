"""One validator process (LEDGER.md §12–§15): the pure `Node` behind authenticated TCP links to
the other validators, an SQLite store, timers and the local HTTP API. Everything runs on one
asyncio loop and every core call's actions are executed synchronously, in order, so nothing
(no API request, no frame) sees the core between a commit and the write that makes it durable."""
import asyncio
import logging
import random
import signal
import time
from collections import Counter, deque

from .actions import (Broadcast, CommitBlock, Halt, InstallSnapshot, PersistSigned, Schedule, Send, ServeBlocks,
                      ServeSnapshot)
from .api import start_api
from .codec import encode_unchecked, hash_value
from .config import ServiceConfig
from .consensus import block_hash
from .messages import TX_MSG_PREFIX
from .node import Node
from .p2p import SEAL_OVERHEAD_BYTES, LinkError, Session, frame, handshake, pack, read_frame, unpack
from .snapshot import chunk_msgs
from .store import Store

log = logging.getLogger("gridhive.ledger")
LINK_UP_RESETS_BACKOFF_S = 5.0       # a link that lived this long was healthy: redial from the minimum delay
TX_SLICE = 64                        # gossiped txs handled per loop turn, so consensus frames and timers cut in
TX_BACKLOG_MAX = 20_000              # gossiped txs waiting; beyond it they are shed (their origin still has them)
SNAPSHOT_CHUNK_BYTES = 1 << 20       # snapshots go out in chunks of this size (§8.4), each its own message


class Link:
    """An authenticated, sealed connection to one peer. Messages queued in one loop turn go out
    sealed together in as few frames as fit (one seal and one write instead of one per message)."""

    def __init__(self, peer: str, writer: asyncio.StreamWriter, session: Session, max_buffer_bytes: int,
                 max_plaintext_bytes: int, counters: Counter, outbound: bool):
        self.peer = peer
        self.max_plaintext_bytes = max_plaintext_bytes
        self.writer = writer
        self.session = session
        self.max_buffer_bytes = max_buffer_bytes
        self.counters = counters
        self.outbound = outbound
        self.closed = asyncio.Event()
        self._queue: list[bytes] = []
        self._queued_bytes = 0
        now = time.monotonic()
        self.last_sent_s = self.last_recv_s = self.opened_s = now

    def backlog_bytes(self) -> int:
        """Queued here and unsent in the transport."""
        return self._queued_bytes + self.writer.transport.get_write_buffer_size()

    def send(self, payload: bytes) -> None:
        if self.closed.is_set():
            return
        if self.backlog_bytes() > self.max_buffer_bytes:
            self.counters["send_dropped"] += 1        # a slow peer: consensus retransmits heal it
            return
        if not self._queue:
            asyncio.get_running_loop().call_soon(self._flush)
        self._queue.append(payload)
        self._queued_bytes += len(payload)

    def _flush(self) -> None:
        if self._queue and not self.closed.is_set():
            frames, batch, size = [], [], 0
            for message in self._queue:
                if batch and size + 4 + len(message) > self.max_plaintext_bytes:
                    frames.append(frame(self.session.seal(pack(batch))))
                    batch, size = [], 0
                batch.append(message)
                size += 4 + len(message)
            frames.append(frame(self.session.seal(pack(batch))))
            self.writer.write(b"".join(frames))
            self.last_sent_s = time.monotonic()
        self._queue.clear()
        self._queued_bytes = 0

    def close(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            self.writer.close()


class Validator:
    def __init__(self, config: ServiceConfig):
        self.config = config
        self.key = config.key
        self.pubkey = config.key.public_hex
        self.genesis_validators = set(config.genesis["validators"])
        self.store = Store(config.data_dir / "ledger.sqlite3")
        self.store.bind_genesis(hash_value(config.genesis))
        snapshot = self.store.latest_snapshot()
        self.node = Node(config.genesis, config.key, config.make_rules(), config.node,
                         blocks=self.store.blocks_after(snapshot[0]["height"] if snapshot else 0),
                         signed_record=self.store.signed_record(), snapshot=snapshot)
        self.chain_id = self.node.chain_id
        self.max_frame_bytes = self.node.max_msg_bytes + SEAL_OVERHEAD_BYTES
        self.addresses = {p.key: (p.host, p.port) for p in config.peers}
        self.links: dict[str, Link] = {}
        self.link_rejections: Counter = Counter()     # §13 codes; the core counts §10 codes
        self.link_events: Counter = Counter()         # connects, disconnects, timeouts: not rejections
        self.blocked: set[str] = set()
        self.recent_commits: deque = deque(maxlen=128)
        self.last_commit: dict | None = self._stored_last_commit()
        self.halted: str | None = None
        self._waiters: dict[str, list[asyncio.Future]] = {}
        self._committed_ids: dict[int, tuple[str, list[str]]] = {}    # stored, announced after the flush
        self._tx_backlog: deque = deque()
        self._commit_event = asyncio.Event()
        self._blocked_changed = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self.started_ms = self.now_ms()

    def now_ms(self) -> int:
        return int(time.time() * 1000) + self.config.clock_offset_ms

    # -- running --------------------------------------------------------------------------------
    async def run(self) -> int:
        """Serve until stop() or a halt; returns the process exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop)
        server = await asyncio.start_server(self._on_inbound, *self.config.listen)
        api_server = await start_api(self)
        log.info("validator %s… height %d listening on %s:%d", self.pubkey[:12], self.node.height,
                 *self.config.listen)
        self._apply(self.node.start(self.now_ms()))
        for peer in self.addresses:
            if self.pubkey < peer:               # one link per pair: the lower key dials
                self._spawn(self._dial_loop(peer))
        self._spawn(self._keepalive_loop())
        await self._stop.wait()
        server.close()
        for link in list(self.links.values()):
            link.close()
        api_server.should_exit = True
        await api_server.serve_task
        for task in list(self._tasks):
            task.cancel()
        self.store.close()
        return 3 if self.halted else 0

    def stop(self) -> None:
        self._stop.set()

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the core: call, then execute its actions in order ---------------------------------------
    def _apply(self, actions: list) -> None:
        """§12: persist actions are durable before any later action runs (one fsync per batch)."""
        dirty = False
        committed = []
        for action in actions:
            kind = type(action)
            if kind is PersistSigned:
                lock = action.record["lock"]
                self.store.put_signed(action.record, lock and self.node.block_bytes(block_hash(lock["block"])))
                dirty = True
                continue
            if kind is CommitBlock:
                self._store_commit(action)
                committed.append(action)
                dirty = True
                continue
            if kind is InstallSnapshot:
                self.store.put_snapshot(action.header, action.commit, action.snapshot)
                log.info("installed the snapshot of height %d from a peer", action.header["height"])
                dirty = True
                continue
            if dirty:
                self.store.flush()
                dirty = False
            if kind is Broadcast:
                for peer, link in self.links.items():
                    if peer != action.exclude:
                        link.send(action.data)
            elif kind is Send:
                link = self.links.get(action.peer)
                if link is not None:
                    link.send(action.data)
            elif kind is Schedule:
                delay_s = max(0, action.at_ms - self.now_ms()) / 1000
                asyncio.get_running_loop().call_later(delay_s, self._on_timer, action.timer)
            elif kind is ServeBlocks:
                link = self.links.get(action.peer)
                if link is not None:
                    for data in self.store.decisions(action.from_height, action.max_blocks):
                        link.send(data)
            elif kind is ServeSnapshot:
                link = self.links.get(action.peer)
                stored = self.store.snapshot_above(action.above_height) if link is not None else None
                if stored is not None:
                    self._spawn(self._send_paced(link, chunk_msgs(*stored, SNAPSHOT_CHUNK_BYTES)))
                elif link is not None:
                    for data in self.store.decisions(action.from_height, action.max_blocks):
                        link.send(data)
            elif kind is Halt:
                self._halt(action.reason)
                return
        if dirty:
            self.store.flush()
        for action in committed:
            self._announce(action)

    def _call(self, method, *args):
        """Run a core entry point; a bug in the core stops the process (fail-stop: a restart from
        the store is safe, carrying on with a half-updated core is not)."""
        if self.halted:
            return None
        try:
            result = method(*args, self.now_ms())
        except Exception:
            log.exception("core failure; stopping")
            self._halt("internal error")
            return None
        return result

    def _on_timer(self, timer: tuple) -> None:
        if not self._stop.is_set():
            actions = self._call(self.node.on_timer, timer)
            if actions:
                self._apply(actions)

    def submit(self, tx) -> str | None:
        """A client's decoded transaction: None if admitted, else the §10 reason."""
        result = self._call(self.node.submit_tx, tx)
        if result is None:
            return "unavailable"
        reason, actions = result
        self._apply(actions)
        return reason

    def _halt(self, reason: str) -> None:
        log.error("halting: %s", reason)
        self.halted = reason
        self.stop()

    def _store_commit(self, action: CommitBlock) -> None:
        block = action.block
        tx_ids = self.node.final_tx_ids[action.height]
        bhash = block_hash(block)
        self.store.put_block(action.height, bhash, block, action.commit, tx_ids, self.node.block_bytes(bhash))
        state = self.node.state
        if block["header"]["snapshot_hash"] and state.height == action.height:   # §5.3, encoded before the next commit
            self.store.put_snapshot(block["header"], action.commit, encode_unchecked(state.snapshot()))
        self._committed_ids[action.height] = (bhash, tx_ids)

    def _announce(self, action: CommitBlock) -> None:
        bhash, tx_ids = self._committed_ids.pop(action.height)
        info = {"height": action.height, "block_hash": bhash, "time_ms": action.block["header"]["time_ms"],
                "commit_ms": self.now_ms(), "round": action.commit[0]["round"],
                "signers": [v["validator"] for v in action.commit], "tx_ids": tx_ids}
        self.recent_commits.append(info)
        self.last_commit = {k: v for k, v in info.items() if k != "tx_ids"}
        for index, tid in enumerate(tx_ids):
            for future in self._waiters.pop(tid, ()):
                if not future.done():
                    future.set_result({"height": action.height, "index": index, "block_hash": bhash})
        self._commit_event.set()
        self._commit_event = asyncio.Event()

    def _stored_last_commit(self) -> dict | None:
        height = self.store.height()
        stored = self.store.block(height) if height else None
        if stored is None:
            return None
        block, commit = stored
        return {"height": height, "block_hash": block_hash(block), "time_ms": block["header"]["time_ms"],
                "commit_ms": None, "round": commit[0]["round"], "signers": [v["validator"] for v in commit]}

    # -- finality and queries (used by the API) --------------------------------------------------
    async def wait_final(self, tid: str, timeout_s: float) -> dict | None:
        """{"height", "index", "block_hash"} once `tid` is final, None if not within timeout_s."""
        where = self.store.tx_location(tid)
        if where is not None:
            return {"height": where[0], "index": where[1], "block_hash": self.store.block_hashes(where[0], where[0])[0]}
        if timeout_s <= 0:
            return None
        future = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(tid, []).append(future)
        try:
            return await asyncio.wait_for(future, timeout_s)
        except asyncio.TimeoutError:
            return None
        finally:
            waiters = self._waiters.get(tid)
            if waiters and future in waiters:
                waiters.remove(future)
                if not waiters:
                    del self._waiters[tid]

    async def commits_from(self, from_height: int, timeout_s: float) -> list[dict]:
        """Recent commits at or above `from_height`, waiting up to timeout_s for the first one."""
        deadline = time.monotonic() + timeout_s
        while True:
            out = [c for c in self.recent_commits if c["height"] >= from_height]
            left = deadline - time.monotonic()
            if out or left <= 0:
                return out
            try:
                await asyncio.wait_for(self._commit_event.wait(), left)
            except asyncio.TimeoutError:
                return []

    def status(self) -> dict:
        status = self.node.status()
        now = time.monotonic()
        peers = []
        for key in sorted(set(self.addresses) | set(self.links)):
            link = self.links.get(key)
            address = self.addresses.get(key)
            peers.append({"key": key, "address": f"{address[0]}:{address[1]}" if address else None,
                          "connected": link is not None, "outbound": link.outbound if link else None,
                          "up_s": round(now - link.opened_s, 1) if link else None,
                          "blocked": key in self.blocked})
        return {**status, "chain_id": self.chain_id, "validator": self.pubkey, "store_height": self.store.height(),
                "last_commit": self.last_commit, "peers": peers, "link_rejections": dict(self.link_rejections),
                "link_events": dict(self.link_events), "halted": self.halted,
                "uptime_s": (self.now_ms() - self.started_ms) // 1000}

    def set_blocked(self, keys: set[str]) -> None:
        """Test-only partition switch (§15): drop links to `keys` and refuse them until cleared."""
        self.blocked = set(keys)
        for key in self.blocked:
            link = self.links.get(key)
            if link is not None:
                link.close()
        self._blocked_changed.set()
        self._blocked_changed = asyncio.Event()

    # -- links ----------------------------------------------------------------------------------
    def _allowed(self, key: str) -> bool:
        return key in self.genesis_validators or key in self.node.consensus.validators or key in self.addresses

    def _reject_link(self, reason: str, detail: str) -> None:
        if self.link_rejections[reason] == 0:
            log.warning("link rejected: %s", detail)     # logged once per reason, counted always
        self.link_rejections[reason] += 1

    async def _on_inbound(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._serve_link(reader, writer, expected=None)

    async def _serve_link(self, reader, writer, expected: str | None) -> None:
        """Handshake, then read frames until the link closes."""
        timeout_s = self.config.p2p.handshake_timeout_ms / 1000
        try:
            peer, session = await asyncio.wait_for(
                handshake(reader, writer, self.key, self.chain_id, self._allowed), timeout_s)
        except LinkError as exc:
            self._reject_link(exc.reason, str(exc))
            writer.close()
            return
        except asyncio.TimeoutError:
            self._reject_link("handshake_timeout", "no handshake in time")
            writer.close()
            return
        except (OSError, asyncio.IncompleteReadError):
            self.link_events["handshake_eof"] += 1
            writer.close()
            return
        if (expected is not None and peer != expected) or peer in self.blocked:
            self._reject_link("unexpected_peer" if peer != expected and expected else "blocked_peer",
                              f"peer {peer[:12]}")
            writer.close()
            return
        old = self.links.get(peer)
        if old is not None:            # the peer reconnected; the old link may be half-open
            old.close()
        link = Link(peer, writer, session, self.config.p2p.max_send_buffer_bytes, self.node.max_msg_bytes + 4,
                    self.link_rejections, outbound=expected is not None)
        self.links[peer] = link
        self.link_events["connected"] += 1
        try:
            await self._read_frames(reader, link)
        finally:
            link.close()
            if self.links.get(peer) is link:
                del self.links[peer]
            self.link_events["disconnected"] += 1

    async def _read_frames(self, reader: asyncio.StreamReader, link: Link) -> None:
        max_bytes = self.max_frame_bytes
        while not link.closed.is_set():
            try:
                body = await read_frame(reader, max_bytes)
                messages = unpack(link.session.open(body))
            except LinkError as exc:
                self._reject_link(exc.reason, f"from {link.peer[:12]}: {exc}")
                if exc.reason == "replayed_frame":     # the stream is still in step: drop just this frame
                    continue
                return
            except (OSError, asyncio.IncompleteReadError):
                return
            link.last_recv_s = time.monotonic()
            for payload in messages:
                if payload.startswith(TX_MSG_PREFIX):
                    self._queue_gossip(link.peer, payload)
                elif payload:                           # empty messages are keepalives
                    actions = self._call(self.node.on_message, link.peer, payload)
                    if actions:
                        self._apply(actions)

    async def _send_paced(self, link: Link, messages: list[bytes]) -> None:
        """Send a snapshot's chunks no faster than the link drains: queued at once, a large one
        would overflow its send buffer and be dropped (§13.4 backpressure)."""
        for data in messages:
            while link.backlog_bytes() + len(data) > link.max_buffer_bytes // 2 and not link.closed.is_set():
                await asyncio.sleep(0.05)
            link.send(data)

    def _queue_gossip(self, peer: str, payload: bytes) -> None:
        """Consensus before transactions: under load, gossiped txs wait in a bounded backlog that
        is worked off a slice per loop turn, so a proposal or a vote never queues behind
        thousands of txs (which would time out rounds and snowball)."""
        if len(self._tx_backlog) >= TX_BACKLOG_MAX:
            self.link_events["tx_shed"] += 1
            return
        if not self._tx_backlog:
            asyncio.get_running_loop().call_soon(self._drain_gossip)
        self._tx_backlog.append((peer, payload))

    def _drain_gossip(self) -> None:
        for _ in range(min(TX_SLICE, len(self._tx_backlog))):
            peer, payload = self._tx_backlog.popleft()
            actions = self._call(self.node.on_message, peer, payload)
            if actions:
                self._apply(actions)
        if self._tx_backlog and not self._stop.is_set():
            asyncio.get_running_loop().call_soon(self._drain_gossip)

    async def _dial_loop(self, peer: str) -> None:
        """Keep one outbound link to `peer`: redial with exponential backoff and jitter."""
        p2p = self.config.p2p
        delay_ms = p2p.reconnect_min_ms
        host, port = self.addresses[peer]
        while not self._stop.is_set():
            link = self.links.get(peer)
            if link is not None:
                await link.closed.wait()
                continue
            if peer in self.blocked:
                await self._blocked_changed.wait()
                delay_ms = p2p.reconnect_min_ms
                continue
            started = time.monotonic()
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), p2p.dial_timeout_ms / 1000)
            except (OSError, asyncio.TimeoutError):
                self.link_events["dial_failed"] += 1
            else:
                await self._serve_link(reader, writer, expected=peer)
                if time.monotonic() - started > LINK_UP_RESETS_BACKOFF_S:
                    delay_ms = p2p.reconnect_min_ms
            await asyncio.sleep((delay_ms / 2 + random.uniform(0, delay_ms / 2)) / 1000)
            delay_ms = min(p2p.reconnect_max_ms, delay_ms * 2)

    async def _keepalive_loop(self) -> None:
        """Ping idle links; close links silent past idle_timeout (a dead peer or a cut cable
        leaves a TCP connection open for minutes)."""
        p2p = self.config.p2p
        while True:
            await asyncio.sleep(p2p.ping_ms / 1000)
            now = time.monotonic()
            for link in list(self.links.values()):
                if now - link.last_recv_s > p2p.idle_timeout_ms / 1000:
                    self.link_events["idle_timeout"] += 1
                    link.close()
                elif now - link.last_sent_s >= p2p.ping_ms / 1000:
                    link.send(b"")
