"""Pending transactions (LEDGER.md §9): per-sender nonce queues, caps and expiry."""
from dataclasses import dataclass

from .tx import TxError


@dataclass(frozen=True)
class MempoolConfig:
    max_txs: int = 20_000
    max_per_sender: int = 64
    max_future_nonces: int = 16
    ttl_ms: int = 60_000
    max_txs_per_proposal: int = 3_000     # proposer policy: a block every validator re-executes within a round


@dataclass
class _Entry:
    tx: dict
    sender: str
    nonce: int
    seq: int
    added_ms: int
    size_bytes: int


class Mempool:
    def __init__(self, config: MempoolConfig = MempoolConfig()):
        self.config = config
        self._by_id: dict[str, _Entry] = {}
        self._by_sender: dict[str, dict[int, str]] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, tx_id: str) -> bool:
        return tx_id in self._by_id

    def add(self, tx: dict, tx_id: str, account_nonce: int, now_ms: int, *, size_bytes: int) -> None:
        """Admit a well-formed, authorised tx (`size_bytes`: its canonical size); raises TxError
        with the §9 reason."""
        c = self.config
        sender, nonce = tx["sender"], tx["nonce"]
        queue = self._by_sender.get(sender, {})
        if tx_id in self._by_id:
            raise TxError("duplicate")
        if nonce < account_nonce:
            raise TxError("nonce_too_low")
        if nonce >= account_nonce + c.max_future_nonces:
            raise TxError("nonce_gap")
        if nonce in queue:
            raise TxError("nonce_taken")
        if len(queue) >= c.max_per_sender:
            raise TxError("sender_full")
        if len(self._by_id) >= c.max_txs:
            raise TxError("mempool_full")
        self._seq += 1
        self._by_id[tx_id] = _Entry(tx, sender, nonce, self._seq, now_ms, size_bytes)
        self._by_sender.setdefault(sender, {})[nonce] = tx_id

    def checked(self, tx: dict) -> tuple[str, int] | None:
        """(id, canonical size) of `tx` if this very transaction is pending here, so it passed
        check_tx (§3.1: chain, schema, signature) on admission and need not again inside a block.
        Found by sender and nonce, then compared in full: a tx that differs in any value, its
        signature included, is not found. `tx` must be ledger JSON already (decoded or walked):
        Python's `==` would take True for 1."""
        if type(tx) is not dict or type(tx.get("sender")) is not str or type(tx.get("nonce")) is not int:
            return None
        queue = self._by_sender.get(tx["sender"])
        if queue is None:
            return None
        tx_id = queue.get(tx["nonce"])
        if tx_id is None:
            return None
        entry = self._by_id[tx_id]
        return (tx_id, entry.size_bytes) if entry.tx == tx else None

    def remove(self, tx_id: str) -> None:
        entry = self._by_id.pop(tx_id, None)
        if entry is not None:
            queue = self._by_sender[entry.sender]
            del queue[entry.nonce]
            if not queue:
                del self._by_sender[entry.sender]

    def runs(self, nonce_of) -> list[list[tuple[str, dict]]]:
        """Executable runs: per sender, consecutive nonces from its account nonce; senders
        ordered by their oldest pending tx."""
        out = []
        for sender, queue in self._by_sender.items():
            nonce, run = nonce_of(sender), []
            while nonce in queue:
                tx_id = queue[nonce]
                run.append((tx_id, self._by_id[tx_id].tx))
                nonce += 1
            if run:
                out.append((min(self._by_id[t].seq for t in queue.values()), run))
        return [run for _, run in sorted(out, key=lambda item: item[0])]

    def next_nonce(self, sender: str, account_nonce: int) -> int:
        """The first nonce after the sender's consecutive pending ones (for txs the node signs itself)."""
        queue, nonce = self._by_sender.get(sender, {}), account_nonce
        while nonce in queue:
            nonce += 1
        return nonce

    def has_ready(self, nonce_of) -> bool:
        return any(nonce_of(sender) in queue for sender, queue in self._by_sender.items())

    def update(self, nonce_of, now_ms: int) -> None:
        """After a commit: drop included/stale nonces (one account lookup per sender) and
        expired entries (oldest first, in admission order)."""
        for sender, queue in list(self._by_sender.items()):
            account_nonce = nonce_of(sender)
            for tx_id in [t for nonce, t in queue.items() if nonce < account_nonce]:
                self.remove(tx_id)
        ttl = self.config.ttl_ms
        while self._by_id:
            tx_id, entry = next(iter(self._by_id.items()))
            if now_ms - entry.added_ms <= ttl:
                break
            self.remove(tx_id)
