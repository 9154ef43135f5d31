"""A validator's SQLite store (LEDGER.md §14): final blocks with their certificates, a tx index,
the last-signed record and state snapshots. WAL with synchronous=FULL: `flush()` returns only
after the transaction is on disk, and the service flushes before anything leaves the process."""
import json
import sqlite3
from pathlib import Path

from .codec import encode_unchecked, hash_value

SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (height INTEGER PRIMARY KEY, hash TEXT NOT NULL, time_ms INTEGER NOT NULL,
                                   block BLOB NOT NULL, "commit" BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS txs (tx_id TEXT PRIMARY KEY, height INTEGER NOT NULL, idx INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS snapshots (height INTEGER PRIMARY KEY, header BLOB NOT NULL, "commit" BLOB NOT NULL,
                                      snapshot BLOB NOT NULL);
"""


class StoreError(RuntimeError):
    pass


class Store:
    def __init__(self, path: Path, keep_snapshots: int = 2):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.keep_snapshots = keep_snapshots
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")     # fsync the WAL at every commit
        self.db.executescript(SCHEMA)
        self._open = False
        self._lock_hash: str | None = None
        self._encoded: tuple[dict | None, bytes] = (None, b"")

    def close(self) -> None:
        self.flush()
        self.db.close()

    # -- writing: calls between begin and flush form one durable transaction -------------------
    def _begin(self) -> None:
        if not self._open:
            self.db.execute("BEGIN")
            self._open = True

    def flush(self) -> None:
        """Make everything written so far durable (one fsync)."""
        if self._open:
            self.db.execute("COMMIT")
            self._open = False

    def bind_genesis(self, genesis_hash: str) -> None:
        """A data dir belongs to one chain: refuse to mix."""
        row = self.db.execute("SELECT value FROM meta WHERE key = 'genesis_hash'").fetchone()
        if row is None:
            self.db.execute("INSERT INTO meta VALUES ('genesis_hash', ?)", (genesis_hash.encode(),))
        elif row[0].decode() != genesis_hash:
            raise StoreError(f"data dir holds another chain (genesis {row[0].decode()[:16]}…)")

    def _block_bytes(self, block: dict, known: bytes | None) -> bytes:
        """The lock block is usually the block committed next: encode that object once, or not
        at all when the caller has its canonical bytes (`known`, as received)."""
        if self._encoded[0] is not block:
            self._encoded = (block, known or encode_unchecked(block))
        return self._encoded[1]

    def put_signed(self, record: dict, lock_block_bytes: bytes | None = None) -> None:
        """The record refers to its lock block by hash; the block itself is written once per lock,
        not with every later signature (a block holds thousands of txs)."""
        self._begin()
        lock = record["lock"]
        if lock is not None:
            lock_hash = hash_value(lock["block"]["header"])
            if lock_hash != self._lock_hash:
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('lock_block', ?)",
                                (self._block_bytes(lock["block"], lock_block_bytes),))
                self._lock_hash = lock_hash
            record = {**record, "lock": {**lock, "block": lock_hash}}
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('signed_record', ?)", (encode_unchecked(record),))

    def put_block(self, height: int, block_hash: str, block: dict, commit: list, tx_ids: list[str],
                  block_bytes: bytes | None = None) -> None:
        """`block_bytes`: the block's canonical encoding, if the caller has it."""
        self._begin()
        self.db.execute("INSERT INTO blocks VALUES (?, ?, ?, ?, ?)",
                        (height, block_hash, block["header"]["time_ms"], self._block_bytes(block, block_bytes),
                         encode_unchecked(commit)))
        self.db.executemany("INSERT OR IGNORE INTO txs VALUES (?, ?, ?)",
                            ((tid, height, i) for i, tid in enumerate(tx_ids)))

    def put_snapshot(self, header: dict, commit: list, snapshot: bytes) -> None:
        """A canonical snapshot (§5.3) with the final header and commit of its height, which is
        what a peer needs to verify it (§8.4), even when this node has no block of that height."""
        self._begin()
        self.db.execute("INSERT OR REPLACE INTO snapshots VALUES (?, ?, ?, ?)",
                        (header["height"], encode_unchecked(header), encode_unchecked(commit), snapshot))
        self.db.execute("DELETE FROM snapshots WHERE height NOT IN "
                        "(SELECT height FROM snapshots ORDER BY height DESC LIMIT ?)", (self.keep_snapshots,))

    # -- reading --------------------------------------------------------------------------------
    def height(self) -> int:
        return self.db.execute("SELECT COALESCE(MAX(height), 0) FROM blocks").fetchone()[0]

    def signed_record(self) -> dict | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'signed_record'").fetchone()
        if row is None:
            return None
        record = json.loads(row[0])
        if record["lock"] is not None:
            block = json.loads(self.db.execute("SELECT value FROM meta WHERE key = 'lock_block'").fetchone()[0])
            if hash_value(block["header"]) != record["lock"]["block"]:
                raise StoreError("the stored lock block does not match the signed record")
            record["lock"]["block"] = block
            self._lock_hash = hash_value(block["header"])
        return record

    def latest_snapshot(self) -> tuple[dict, dict] | None:
        """(snapshot, its final header), the newest one."""
        row = self.db.execute("SELECT snapshot, header FROM snapshots ORDER BY height DESC LIMIT 1").fetchone()
        return (json.loads(row[0]), json.loads(row[1])) if row else None

    def snapshot_above(self, height: int) -> tuple[bytes, bytes, bytes] | None:
        """(header, commit, snapshot) as stored, of the newest snapshot above `height`."""
        return self.db.execute('SELECT header, "commit", snapshot FROM snapshots WHERE height > ? '
                               "ORDER BY height DESC LIMIT 1", (height,)).fetchone()

    def blocks_after(self, height: int):
        """Stored blocks above `height`, in order, decoded one at a time (restart replay)."""
        cursor = self.db.execute("SELECT height, block FROM blocks WHERE height > ? ORDER BY height", (height,))
        expected = height + 1
        for h, data in cursor:
            if h != expected:
                raise StoreError(f"block store has a gap at height {expected}")
            expected += 1
            yield json.loads(data)

    def decisions(self, from_height: int, max_blocks: int) -> list[bytes]:
        """Stored blocks as `decision` envelopes, built from the stored canonical bytes (keys
        block < commit < kind are already in canonical order)."""
        rows = self.db.execute('SELECT block, "commit" FROM blocks WHERE height >= ? ORDER BY height LIMIT ?',
                               (from_height, max_blocks))
        return [b'{"block":' + block + b',"commit":' + commit + b',"kind":"decision"}' for block, commit in rows]

    def block(self, height: int) -> tuple[dict, list] | None:
        row = self.db.execute('SELECT block, "commit" FROM blocks WHERE height = ?', (height,)).fetchone()
        return (json.loads(row[0]), json.loads(row[1])) if row else None

    def tx_location(self, tx_id: str) -> tuple[int, int] | None:
        row = self.db.execute("SELECT height, idx FROM txs WHERE tx_id = ?", (tx_id,)).fetchone()
        return (row[0], row[1]) if row else None

    def block_hashes(self, from_height: int, to_height: int) -> list[str]:
        rows = self.db.execute("SELECT hash FROM blocks WHERE height BETWEEN ? AND ? ORDER BY height",
                               (from_height, to_height))
        return [r[0] for r in rows]
