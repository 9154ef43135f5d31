"""Controller storage: SQLite (default) or PostgreSQL (psycopg 3), one schema and one set of SQL.

Idempotency is in the keys: `batches` (gw, gseq) and `messages` (node, seq). A batch is stored in the
same transaction as its items and the registry changes, so "batch row exists" means "all of it is
stored" — which is what the acknowledgement promises.
"""
from __future__ import annotations

import sqlite3
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from ghnode import wire

from . import registry

SCHEMA_VERSION = 1
# One DDL for both back ends: SQLite accepts BIGINT/BOOLEAN and gives them integer affinity.
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS gateways (
        gw TEXT PRIMARY KEY, first_seen_ms BIGINT NOT NULL, last_seen_ms BIGINT NOT NULL,
        last_gseq BIGINT NOT NULL, batches BIGINT NOT NULL, items BIGINT NOT NULL,
        fw TEXT, online BOOLEAN, status_ms BIGINT)""",
    """CREATE TABLE IF NOT EXISTS batches (
        gw TEXT NOT NULL, gseq BIGINT NOT NULL, ts_ms BIGINT NOT NULL, received_ms BIGINT NOT NULL,
        items INTEGER NOT NULL, stored INTEGER NOT NULL, rejected INTEGER NOT NULL,
        PRIMARY KEY (gw, gseq))""",
    """CREATE TABLE IF NOT EXISTS messages (
        node TEXT NOT NULL, seq BIGINT NOT NULL, t TEXT NOT NULL, boot BIGINT NOT NULL, ts_ms BIGINT NOT NULL,
        gw TEXT NOT NULL, gseq BIGINT NOT NULL, received_ms BIGINT NOT NULL, payload TEXT NOT NULL,
        PRIMARY KEY (node, seq))""",
    "CREATE INDEX IF NOT EXISTS messages_node_ts ON messages (node, ts_ms)",
    """CREATE TABLE IF NOT EXISTS nodes (
        node TEXT PRIMARY KEY, gw TEXT, first_seen_ms BIGINT NOT NULL, last_seen_ms BIGINT,
        last_seq BIGINT NOT NULL, last_ts_ms BIGINT, boot BIGINT, fw TEXT, heap_free_b BIGINT, rssi_dbm BIGINT,
        buf_depth BIGINT, buf_dropped BIGINT, safe_mode BOOLEAN, error TEXT, uptime_s BIGINT, reset_cause TEXT,
        health_seq BIGINT NOT NULL, online BOOLEAN, status_gw TEXT, status_gseq BIGINT NOT NULL)""",
)
TABLES = ("gateways", "nodes", "messages", "batches", "meta")  # what create=False requires
_MESSAGE_COLUMNS = ("node", "seq", "t", "boot", "ts_ms", "gw", "gseq", "received_ms", "payload")


class NotControllerDatabase(Exception):
    """The database opened, but the controller's tables are not in it (and create=False made none)."""


@dataclass(frozen=True)
class BatchResult:
    gw: str
    gseq: int
    duplicate: bool      # the batch was stored before: nothing written, acknowledge again
    stored: int = 0      # items written now
    duplicates: int = 0  # items already stored (by node, seq), e.g. resent in another batch


def _upsert(table, columns, key):
    cols = ", ".join(columns)
    marks = ", ".join("?" * len(columns))
    sets = ", ".join(f"{c} = excluded.{c}" for c in columns if c != key)
    return f"INSERT INTO {table} ({cols}) VALUES ({marks}) ON CONFLICT ({key}) DO UPDATE SET {sets}"


class Store:
    """The SQL both back ends share; subclasses open the connection and adapt placeholders."""

    def _sql(self, sql):
        return sql

    def _reconnect_if_broken(self):
        """Open a new connection if the server dropped the old one (a database restart)."""

    def _rollback(self):
        if not getattr(self.conn, "broken", False):  # nothing to roll back on a dead connection
            self.conn.rollback()

    def _execute(self, sql, params=()):
        return self.conn.execute(self._sql(sql), params)

    def _executemany(self, sql, rows):
        cur = self.conn.cursor()
        cur.executemany(self._sql(sql), rows)
        return cur.rowcount

    def _create_schema(self):
        for ddl in SCHEMA:
            self._execute(ddl)
        self._execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?) ON CONFLICT (key) DO NOTHING",
                      (str(SCHEMA_VERSION),))
        self.conn.commit()

    def _check_schema(self):
        missing = [t for t in TABLES if t not in self._tables()]
        if missing:
            self.conn.close()
            raise NotControllerDatabase(f"no `{missing[0]}` table")

    # --- reads ------------------------------------------------------------------------------------

    def _rows(self, sql, params=()):
        cur = self._execute(sql, params)
        names = [d[0] for d in cur.description]
        rows = []
        for values in cur.fetchall():
            row = dict(zip(names, values))
            for name in registry.BOOL_COLUMNS:
                if name in row and row[name] is not None:
                    row[name] = bool(row[name])
            rows.append(row)
        return rows

    def _by_key(self, table, key, keys):
        if not keys:
            return {}
        marks = ", ".join("?" * len(keys))
        return {r[key]: r for r in self._rows(f"SELECT * FROM {table} WHERE {key} IN ({marks})", tuple(keys))}

    def gateways(self):
        return self._rows("SELECT * FROM gateways ORDER BY gw")

    def nodes(self):
        return self._rows("SELECT * FROM nodes ORDER BY gw, node")

    def message_counts(self):
        return {r["node"]: r["n"] for r in self._rows("SELECT node, COUNT(*) AS n FROM messages GROUP BY node")}

    def messages(self, node=None):
        where, params = ("WHERE node = ?", (node,)) if node else ("", ())
        return self._rows(f"SELECT * FROM messages {where} ORDER BY node, seq", params)

    def latest(self, t):
        """The newest message of type t from each node."""
        return self._rows("SELECT m.* FROM messages m JOIN (SELECT node, MAX(seq) AS seq FROM messages "
                          "WHERE t = ? GROUP BY node) x ON m.node = x.node AND m.seq = x.seq ORDER BY m.node",
                          (t,))

    def batch_keys(self):
        return {(r["gw"], r["gseq"]) for r in self._rows("SELECT gw, gseq FROM batches")}

    # --- writes -----------------------------------------------------------------------------------

    def commit_batches(self, uplinks, received_ms):
        """Store uplinks (parsed batches) in one transaction; a BatchResult for each, in order."""
        self._reconnect_if_broken()
        try:
            results = [self._store_batch(u, received_ms) for u in uplinks]
            self.conn.commit()
        except BaseException:
            self._rollback()
            raise
        return results

    def _store_batch(self, up, received_ms):
        claimed = self._execute(
            "INSERT INTO batches (gw, gseq, ts_ms, received_ms, items, stored, rejected) VALUES (?, ?, ?, ?, ?, 0, ?)"
            " ON CONFLICT (gw, gseq) DO NOTHING",
            (up.gw, up.gseq, up.ts_ms, received_ms, len(up.items) + len(up.rejected), len(up.rejected))).rowcount
        if claimed == 0:
            return BatchResult(up.gw, up.gseq, duplicate=True)
        rows = [(m["node"], m["seq"], m["t"], m["boot"], m["ts_ms"], up.gw, up.gseq, received_ms, body)
                for m, body in zip(up.items, up.bodies) if m["t"] in wire.ACKED_KINDS]  # status: registry only
        stored = self._executemany(
            f"INSERT INTO messages ({', '.join(_MESSAGE_COLUMNS)}) VALUES ({', '.join('?' * len(_MESSAGE_COLUMNS))})"
            " ON CONFLICT (node, seq) DO NOTHING", rows) if rows else 0
        self._execute("UPDATE batches SET stored = ? WHERE gw = ? AND gseq = ?", (stored, up.gw, up.gseq))
        self._update_registry(up, stored, received_ms)
        return BatchResult(up.gw, up.gseq, duplicate=False, stored=stored, duplicates=len(rows) - stored)

    def _update_registry(self, up, stored, received_ms):
        gw = self._by_key("gateways", "gw", [up.gw]).get(up.gw) or registry.new_gateway(up.gw, received_ms)
        self._save("gateways", registry.GATEWAY_COLUMNS, "gw", [registry.apply_batch(gw, up.gseq, stored, received_ms)])
        per_node = defaultdict(list)
        for item in up.items:
            per_node[item["node"]].append(item)
        known = self._by_key("nodes", "node", sorted(per_node))
        self._save("nodes", registry.NODE_COLUMNS, "node", [
            registry.apply_items(known.get(n) or registry.new_node(n, received_ms), up.gw, up.gseq, items, received_ms)
            for n, items in sorted(per_node.items())])

    def _save(self, table, columns, key, records):
        if records:
            self._executemany(_upsert(table, columns, key), [tuple(r[c] for c in columns) for r in records])

    def apply_status(self, status, received_ms):
        """Record a gateway's status and its view of its nodes."""
        self._reconnect_if_broken()
        try:
            gw = self._by_key("gateways", "gw", [status.gw]).get(status.gw) \
                or registry.new_gateway(status.gw, received_ms)
            self._save("gateways", registry.GATEWAY_COLUMNS, "gw",
                       [registry.apply_gateway_status(gw, status, received_ms)])
            known = self._by_key("nodes", "node", sorted({n.node for n in status.nodes}))
            self._save("nodes", registry.NODE_COLUMNS, "node", [
                registry.apply_node_status(known.get(n.node) or registry.new_node(n.node, received_ms), status.gw, n)
                for n in status.nodes])
            self.conn.commit()
        except BaseException:
            self._rollback()
            raise

    def close(self):
        self.conn.close()


class SqliteStore(Store):
    def __init__(self, path: Path, create=True):
        if not create:  # read-only: nothing in the file can change
            self.conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
            self.conn.execute("PRAGMA busy_timeout=5000")
            self._check_schema()
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(path)
        # WAL: `fleet status` can read while the service writes. FULL: an acknowledged batch survives
        # a power cut, not only a crash (one fsync per transaction, amortised by grouping batches).
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("PRAGMA busy_timeout=5000")
        self._create_schema()

    def _tables(self):
        return {r[0] for r in self._execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


class PostgresStore(Store):
    def __init__(self, url, create=True):
        import psycopg  # optional dependency: the `pg` extra

        self._connect = psycopg.connect
        self.url = url
        self.conn = self._connect(url)
        if create:
            self._create_schema()
        else:
            self.conn.read_only = True  # the server refuses any write in this session
            self._check_schema()

    def _sql(self, sql):
        return sql.replace("?", "%s")

    def _reconnect_if_broken(self):
        if self.conn.broken or self.conn.closed:
            self.conn = self._connect(self.url)

    def _tables(self):
        return {r[0] for r in self._execute("SELECT table_name FROM information_schema.tables "
                                            "WHERE table_schema = ANY (current_schemas(false))")}


def sqlite_path(url):
    """The file of `sqlite:///relative`, `sqlite:////absolute` or a plain path; None for PostgreSQL."""
    if url.startswith(("postgresql://", "postgres://")):
        return None
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
    elif "://" in url:
        # the scheme only: the rest of a URL may hold a password
        raise ValueError(f"unsupported database URL scheme {url.split('://')[0]!r}: use postgresql://… or sqlite:///path")
    else:
        path = url
    if path in ("", ":memory:"):  # SQLite would open a temporary database that vanishes on close
        raise ValueError(f"the database URL {url!r} has no file path: use "
                         "sqlite:///path/to/controller.db (or a plain path) or postgresql://…")
    return Path(path)


def open_store(url, create=True):
    """A Store for `postgresql://…` / `postgres://…`, `sqlite:///relative`, `sqlite:////absolute` or a path.

    With create=False (read-only commands) nothing is created or changed: the database is opened
    read-only, and a missing SQLite file or a database without the controller's tables is an error.
    """
    path = sqlite_path(url)
    if path is None:
        return PostgresStore(url, create)
    if not create and not path.exists():
        raise FileNotFoundError(f"no controller database at {path}")
    return SqliteStore(path, create)
