"""The gateway's SQLite database (WAL): readings, aggregates, interval energies, node state, outbox.

One connection, used from the gateway's event loop only. Every batch of verdicts is one
transaction, so after a crash the database holds whole batches: a message, its aggregates, its
interval energy, its outbox copy and the node's new counter baseline are stored together or not
at all. Acks are sent only after the commit, so anything not stored is resent by the node.

`synchronous=FULL` (the default) makes a commit durable before the ack leaves: a node deletes an
acknowledged reading from its flash, so a power cut must not lose a committed batch.

Tables (times are Unix ms, UTC):
  message(node, seq, ...)         raw messages, kept `raw_retention_days`
  quarantine(node, seq, ...)      authentic but invalid messages, kept as long, with the reason
  minute(node, ch, minute_ms)     1-minute power aggregates, kept `minute_retention_days`
  interval_energy(node, ch, start_ms)  import/export Wh per settlement interval, kept (default forever)
  node_state, channel_mark        what the ingest core needs after a restart
  outbox_item, outbox_batch, meta the uplink's store-and-forward queue (see gateway.uplink)
  meter_reading(household, slot_ms)  the utility meter, one row per poll slot (gaps with their reason)
  meter_check(household, start_ms)   each interval's meter energy against the node circuits
"""
from __future__ import annotations

import json
import sqlite3
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

from .energy import MINUTE_MS
from .ingest import ACCEPTED, ChannelMark, NodeTrack, Verdict

DAY_MS = 86_400_000

SCHEMA = """
-- A rowid table: rows are appended in arrival order and only the small (node, seq) index takes
-- inserts all over its tree (as a WITHOUT ROWID table keyed by (node, seq), every batch of many
-- nodes' ~600-byte rows dirtied pages all over the table: 4x the CPU per message, measured).
CREATE TABLE IF NOT EXISTS message (
    node TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL, boot INTEGER NOT NULL,
    time_ms INTEGER NOT NULL, rx_ms INTEGER NOT NULL, body TEXT NOT NULL,
    UNIQUE (node, seq));
CREATE INDEX IF NOT EXISTS message_node_time ON message (node, time_ms);
CREATE INDEX IF NOT EXISTS message_rx ON message (rx_ms);
CREATE TABLE IF NOT EXISTS quarantine (
    node TEXT NOT NULL, seq INTEGER NOT NULL, reason TEXT NOT NULL, rx_ms INTEGER NOT NULL,
    body TEXT NOT NULL, PRIMARY KEY (node, seq)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS quarantine_rx ON quarantine (rx_ms);
CREATE TABLE IF NOT EXISTS minute (
    node TEXT NOT NULL, ch INTEGER NOT NULL, minute_ms INTEGER NOT NULL,
    samples INTEGER NOT NULL, power_sum_w INTEGER NOT NULL,
    power_min_w INTEGER NOT NULL, power_max_w INTEGER NOT NULL,
    PRIMARY KEY (node, ch, minute_ms)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS minute_time ON minute (minute_ms);
CREATE TABLE IF NOT EXISTS interval_energy (
    node TEXT NOT NULL, ch INTEGER NOT NULL, start_ms INTEGER NOT NULL,
    import_wh INTEGER NOT NULL, export_wh INTEGER NOT NULL,
    PRIMARY KEY (node, ch, start_ms)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS interval_energy_time ON interval_energy (start_ms);
CREATE TABLE IF NOT EXISTS node_state (
    node TEXT PRIMARY KEY, max_seq INTEGER NOT NULL, floor_seq INTEGER NOT NULL,
    boot INTEGER, last_seen_ms INTEGER, fw TEXT, online INTEGER, last_cid INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS channel_mark (
    node TEXT NOT NULL, ch INTEGER NOT NULL, seq INTEGER NOT NULL, boot INTEGER NOT NULL,
    time_ms INTEGER NOT NULL, in_wh INTEGER NOT NULL, out_wh INTEGER NOT NULL,
    PRIMARY KEY (node, ch)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox_item (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox_batch (
    gseq INTEGER PRIMARY KEY, payload BLOB NOT NULL, items INTEGER NOT NULL, created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

# The utility meter (gateway.meter.service). Counters are REAL: the meter's float32 kWh × 1000.
METER_SCHEMA = """
CREATE TABLE IF NOT EXISTS meter_reading (
    household TEXT NOT NULL, slot_ms INTEGER NOT NULL, ts_ms INTEGER NOT NULL, gap_reason TEXT,
    import_wh REAL, export_wh REAL, body TEXT NOT NULL,
    PRIMARY KEY (household, slot_ms)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS meter_reading_time ON meter_reading (household, ts_ms);
CREATE TABLE IF NOT EXISTS meter_check (
    household TEXT NOT NULL, start_ms INTEGER NOT NULL, interval_ms INTEGER NOT NULL, status TEXT NOT NULL,
    meter_import_wh INTEGER, meter_export_wh INTEGER,
    circuits_import_wh INTEGER NOT NULL, circuits_export_wh INTEGER NOT NULL,
    discrepancy_wh INTEGER, discrepancy_pct REAL, circuits_complete INTEGER NOT NULL,
    circuits TEXT NOT NULL, checked_ms INTEGER NOT NULL,
    PRIMARY KEY (household, start_ms)) WITHOUT ROWID;
"""
METER_CHECK_COLUMNS = ("household", "start_ms", "interval_ms", "status", "meter_import_wh", "meter_export_wh",
                       "circuits_import_wh", "circuits_export_wh", "discrepancy_wh", "discrepancy_pct",
                       "circuits_complete", "circuits", "checked_ms")


def canonical_json(obj) -> str:
    """Sorted keys, no whitespace, ASCII: the uplink's canonical form (equal to wire.canonical
    for the printable-ASCII messages nodes send)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


class Storage:
    def __init__(self, path: Path | str, synchronous: str = "FULL", outbox: bool = True):
        """`outbox`: whether write() queues what it stores for the uplink. A gateway without an
        uplink keeps none: nothing would ever take the copies out again."""
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path, self.synchronous, self.outbox = str(path), synchronous, outbox
        self.db = self.connect()
        self.db.executescript(SCHEMA)
        self.db.executescript(METER_SCHEMA)

    def connect(self, check_same_thread: bool = True) -> sqlite3.Connection:
        """A connection to this database. The gateway writes its ingest batches on one of their own,
        in a thread of their own (service.Gateway), so the event loop goes on while SQLite works
        and fsyncs; SQLite lets one connection write at a time, the other waits (busy_timeout)."""
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=check_same_thread)  # explicit BEGIN
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.synchronous}")
        db.execute("PRAGMA busy_timeout=5000")
        return db

    def close(self) -> None:
        self.db.close()

    def _tx(self):
        return _Transaction(self.db)

    # --- ingest -------------------------------------------------------------------------------

    def is_known(self, node: str, seq: int) -> bool:
        row = self.db.execute("SELECT 1 FROM message WHERE node=? AND seq=? UNION ALL "
                              "SELECT 1 FROM quarantine WHERE node=? AND seq=? LIMIT 1",
                              (node, seq, node, seq)).fetchone()
        return row is not None

    def load_tracks(self) -> dict[str, NodeTrack]:
        tracks = {}
        for node, max_seq, floor_seq, boot, seen, fw, online in self.db.execute(
                "SELECT node, max_seq, floor_seq, boot, last_seen_ms, fw, online FROM node_state"):
            tracks[node] = NodeTrack(max_seq=max_seq, floor_seq=floor_seq, boot=boot, last_seen_ms=seen,
                                     fw=fw, online=None if online is None else bool(online))
        for node, ch, seq, boot, time_ms, in_wh, out_wh in self.db.execute("SELECT * FROM channel_mark"):
            tracks.setdefault(node, NodeTrack()).channels[ch] = ChannelMark(seq, boot, time_ms, in_wh, out_wh)
        return tracks

    def commit(self, verdicts: Iterable[tuple[Verdict, int]], tracks: dict[str, NodeTrack]) -> int:
        """Store (verdict, rx_ms) pairs and the given nodes' state in one transaction (write())."""
        return self.write(list(verdicts), node_rows(tracks))

    def write(self, verdicts: list[tuple[Verdict, int]], nodes: list[tuple], db: sqlite3.Connection | None = None) -> int:
        """Store (verdict, rx_ms) pairs and node_rows() in one transaction on `db` (this connection
        by default). The verdicts are read, never changed, so another thread may write them.

        Idempotent on (node, seq): a message already stored adds nothing (no second aggregate,
        interval energy or outbox copy). Returns how many messages were newly stored.

        Rows go in with one executemany per table, and the aggregates of the whole batch are summed
        here first: one upsert per (node, channel, minute) and (node, channel, interval), and only
        the batch's last counter baseline per channel, instead of one statement each per message.
        """
        accepted, quarantined = [], []
        for verdict, rx_ms in verdicts:
            if verdict.quarantine:
                quarantined.append((verdict.node, verdict.msg["seq"], verdict.reason, rx_ms, verdict.body))
            elif verdict.outcome == ACCEPTED:
                accepted.append((verdict, rx_ms))
        with _Transaction(db or self.db) as cur:
            if quarantined:
                cur.executemany("INSERT OR IGNORE INTO quarantine VALUES (?,?,?,?,?)", quarantined)
            accepted = self._insert_new(cur, accepted)
            if self.outbox:
                cur.executemany("INSERT INTO outbox_item (body) VALUES (?)", [(v.body,) for v, _ in accepted])
            self._aggregate(cur, [v for v, _ in accepted if v.msg["t"] == "tele"])
            # The floor only rises: prune() may have raised it after this batch's rows were taken.
            cur.executemany(
                "INSERT INTO node_state (node, max_seq, floor_seq, boot, last_seen_ms, fw, online) "
                "VALUES (?,?,?,?,?,?,?) ON CONFLICT (node) DO UPDATE SET max_seq=excluded.max_seq, "
                "floor_seq=max(floor_seq, excluded.floor_seq), boot=excluded.boot, "
                "last_seen_ms=excluded.last_seen_ms, fw=excluded.fw, online=excluded.online", nodes)
        return len(accepted)

    def _insert_new(self, cur, accepted: list[tuple[Verdict, int]]) -> list[tuple[Verdict, int]]:
        """Insert the messages; returns those that were new. The ingest core never passes one that
        is stored already, so the plain INSERT succeeds; if it does not, the batch is filtered
        against the table (and itself) and inserted again."""
        insert = "INSERT INTO message VALUES (?,?,?,?,?,?,?)"
        cur.execute("SAVEPOINT new_messages")
        try:
            cur.executemany(insert, _message_rows(accepted))
        except sqlite3.IntegrityError:
            cur.execute("ROLLBACK TO new_messages")
            seen, fresh = set(), []
            for verdict, rx_ms in accepted:
                key = (verdict.node, verdict.msg["seq"])
                if key not in seen and cur.execute("SELECT 1 FROM message WHERE node=? AND seq=?", key).fetchone() is None:
                    seen.add(key)
                    fresh.append((verdict, rx_ms))
            accepted = fresh
            cur.executemany(insert, _message_rows(accepted))
        cur.execute("RELEASE new_messages")
        return accepted

    @staticmethod
    def _aggregate(cur, teles: list[Verdict]) -> None:
        minutes: dict[tuple, list[int]] = {}  # (node, ch, minute_ms) -> [samples, sum, min, max]
        energy: dict[tuple, list[int]] = {}  # (node, ch, start_ms) -> [import_wh, export_wh]
        marks: dict[tuple, tuple] = {}  # (node, ch) -> the batch's last baseline row
        for v in teles:
            node, minute_ms = v.node, v.time_ms - v.time_ms % MINUTE_MS
            for ch in v.msg["ch"]:
                p, key = ch["power_w"], (node, ch["n"], minute_ms)
                m = minutes.get(key)
                if m is None:
                    minutes[key] = [1, p, p, p]
                else:
                    m[0] += 1
                    m[1] += p
                    m[2] = min(m[2], p)
                    m[3] = max(m[3], p)
            for e in v.energy:
                key = (e.node, e.ch, e.start_ms)
                total = energy.get(key)
                if total is None:
                    energy[key] = [e.import_wh, e.export_wh]
                else:
                    total[0] += e.import_wh
                    total[1] += e.export_wh
            for n, m in v.marks.items():
                marks[(node, n)] = (node, n, m.seq, m.boot, m.time_ms, m.in_wh, m.out_wh)
        cur.executemany(
            "INSERT INTO minute VALUES (?,?,?,?,?,?,?) ON CONFLICT DO UPDATE SET samples=samples+excluded.samples, "
            "power_sum_w=power_sum_w+excluded.power_sum_w, power_min_w=min(power_min_w, excluded.power_min_w), "
            "power_max_w=max(power_max_w, excluded.power_max_w)", [k + tuple(m) for k, m in minutes.items()])
        cur.executemany(
            "INSERT INTO interval_energy VALUES (?,?,?,?,?) ON CONFLICT DO UPDATE SET "
            "import_wh=import_wh+excluded.import_wh, export_wh=export_wh+excluded.export_wh",
            [k + tuple(e) for k, e in energy.items()])
        cur.executemany("INSERT OR REPLACE INTO channel_mark VALUES (?,?,?,?,?,?,?)", list(marks.values()))

    # --- relay commands -------------------------------------------------------------------------

    def next_cid(self, node: str) -> int:
        """A command id above every one issued to `node` before, also across gateway restarts."""
        with self._tx() as cur:
            row = cur.execute("UPDATE node_state SET last_cid = last_cid + 1 WHERE node=? RETURNING last_cid",
                              (node,)).fetchone()
        if row is None:
            raise KeyError(node)
        return row[0]

    # --- outbox ---------------------------------------------------------------------------------

    def outbox_depth(self) -> tuple[int, int]:
        """(items waiting to be batched, batches waiting for the controller's ack)."""
        items = self.db.execute("SELECT count(*) FROM outbox_item").fetchone()[0]
        batches = self.db.execute("SELECT count(*) FROM outbox_batch").fetchone()[0]
        return items, batches

    def form_batches(self, gateway_id: str, max_items: int, now_ms: int, max_batches: int,
                     db: sqlite3.Connection | None = None) -> list[tuple[int, bytes]]:
        """Move up to max_batches x max_items outbox items, oldest first, into numbered batches
        (on `db`, this connection by default).

        gseq comes from `meta` and is stored with the batch in the same transaction, so it never
        repeats, even when every batch has been acknowledged and deleted.
        """
        formed = []
        with _Transaction(db or self.db) as cur:
            row = cur.execute("SELECT value FROM meta WHERE key='last_gseq'").fetchone()
            gseq = row[0] if row else 0
            for _ in range(max_batches):
                rows = cur.execute("SELECT id, body FROM outbox_item ORDER BY id LIMIT ?", (max_items,)).fetchall()
                if not rows:
                    break
                gseq += 1
                # Keys in sorted order (gseq, gw, items, ts_ms, v): the envelope is canonical JSON
                # around items that already are.
                payload = ('{"gseq":%d,"gw":%s,"items":[%s],"ts_ms":%d,"v":1}' % (
                    gseq, json.dumps(gateway_id), ",".join(body for _, body in rows), now_ms)).encode()
                cur.execute("INSERT INTO outbox_batch VALUES (?,?,?,?)", (gseq, payload, len(rows), now_ms))
                cur.execute("DELETE FROM outbox_item WHERE id <= ?", (rows[-1][0],))
                formed.append((gseq, payload))
            if formed:
                cur.execute("INSERT OR REPLACE INTO meta VALUES ('last_gseq', ?)", (gseq,))
        return formed

    def batches(self, after_gseq: int, limit: int) -> list[tuple[int, bytes]]:
        return self.db.execute("SELECT gseq, payload FROM outbox_batch WHERE gseq > ? ORDER BY gseq LIMIT ?",
                               (after_gseq, limit)).fetchall()

    def delete_batches(self, gseqs: Iterable[int], db: sqlite3.Connection | None = None) -> int:
        with _Transaction(db or self.db) as cur:
            cur.executemany("DELETE FROM outbox_batch WHERE gseq = ?", [(g,) for g in gseqs])
            return cur.rowcount

    # --- retention ------------------------------------------------------------------------------

    def prune(self, now_ms: int, raw_days: int, minute_days: int, interval_days: int,
              tracks: dict[str, NodeTrack]) -> dict[str, int]:
        """Drop data past its retention. Raises each node's replay floor to the highest seq dropped,
        so a pruned message replayed later is refused instead of being stored a second time."""
        raw_cut = now_ms - raw_days * DAY_MS
        deleted = {}
        with self._tx() as cur:
            floors = cur.execute(
                "SELECT node, max(seq) FROM (SELECT node, seq FROM message WHERE rx_ms < ?1 "
                "UNION ALL SELECT node, seq FROM quarantine WHERE rx_ms < ?1) GROUP BY node", (raw_cut,)).fetchall()
            for node, floor in floors:
                track = tracks.setdefault(node, NodeTrack())
                track.floor_seq = max(track.floor_seq, floor)
                cur.execute("UPDATE node_state SET floor_seq=? WHERE node=?", (track.floor_seq, node))
            deleted["message"] = cur.execute("DELETE FROM message WHERE rx_ms < ?", (raw_cut,)).rowcount
            deleted["quarantine"] = cur.execute("DELETE FROM quarantine WHERE rx_ms < ?", (raw_cut,)).rowcount
            deleted["minute"] = cur.execute("DELETE FROM minute WHERE minute_ms < ?",
                                            (now_ms - minute_days * DAY_MS,)).rowcount
            deleted["interval_energy"] = cur.execute(
                "DELETE FROM interval_energy WHERE start_ms < ?",
                (now_ms - interval_days * DAY_MS,)).rowcount if interval_days else 0
        return deleted

    # --- queries --------------------------------------------------------------------------------

    def readings(self, node: str, start_ms: int, end_ms: int, kind: str | None = None) -> list[dict]:
        """Raw messages of one node with start_ms <= time_ms < end_ms, oldest first."""
        sql = "SELECT body FROM message WHERE node=? AND time_ms >= ? AND time_ms < ?"
        args: list = [node, start_ms, end_ms]
        if kind:
            sql += " AND kind=?"
            args.append(kind)
        return [json.loads(b) for (b,) in self.db.execute(sql + " ORDER BY time_ms, seq", args)]

    def minutes(self, node: str, ch: int, start_ms: int, end_ms: int) -> list[dict]:
        rows = self.db.execute(
            "SELECT minute_ms, samples, power_sum_w, power_min_w, power_max_w FROM minute "
            "WHERE node=? AND ch=? AND minute_ms >= ? AND minute_ms < ? ORDER BY minute_ms",
            (node, ch, start_ms, end_ms))
        return [{"minute_ms": m, "samples": n, "power_avg_w": s // n, "power_min_w": lo, "power_max_w": hi}
                for m, n, s, lo, hi in rows]

    def interval_energy(self, start_ms: int, end_ms: int, node: str | None = None) -> list[dict]:
        """Per-circuit interval energies with start_ms <= start < end_ms."""
        sql = "SELECT node, ch, start_ms, import_wh, export_wh FROM interval_energy WHERE start_ms >= ? AND start_ms < ?"
        args: list = [start_ms, end_ms]
        if node:
            sql += " AND node=?"
            args.append(node)
        return [{"node": n, "ch": c, "start_ms": s, "import_wh": i, "export_wh": e}
                for n, c, s, i, e in self.db.execute(sql + " ORDER BY start_ms, node, ch", args)]

    def household_energy(self, registry, start_ms: int, end_ms: int) -> dict[str, dict[int, tuple[int, int]]]:
        """household -> {interval start: (import_wh, export_wh)} summed over its grid-connection
        channels (`grid = true` in the registry): the numbers the market settles on."""
        grid = {(e.node_id, c.n): e.household for e in registry for c in e.channels.values() if c.grid}
        out: dict[str, dict[int, tuple[int, int]]] = {}
        for row in self.interval_energy(start_ms, end_ms):
            household = grid.get((row["node"], row["ch"]))
            if household is None:
                continue
            imp, exp = out.setdefault(household, {}).get(row["start_ms"], (0, 0))
            out[household][row["start_ms"]] = (imp + row["import_wh"], exp + row["export_wh"])
        return out

    def count(self, table: str) -> int:
        if table not in ("message", "quarantine", "minute", "interval_energy", "outbox_item", "outbox_batch"):
            raise ValueError(table)
        return self.db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


    # --- utility meter --------------------------------------------------------------------------

    def add_meter_reading(self, household: str, reading) -> None:
        """Store one gateway.meter.MeterReading: a read slot with its values, or a gap with its reason."""
        values = reading.values
        body = canonical_json({"values": values, "rejected": reading.rejected, "attempts": reading.attempts})
        with self._tx() as cur:
            cur.execute("INSERT OR REPLACE INTO meter_reading VALUES (?,?,?,?,?,?,?)",
                        (household, reading.slot_ts_ms, reading.ts_ms, reading.reason if reading.gap else None,
                         values.get("import_energy_wh"), values.get("export_energy_wh"), body))

    def meter_counters(self, household: str, start_ms: int, end_ms: int) -> list[tuple[int, float, float]]:
        """(ts_ms, import_wh, export_wh) of the readings with both counters, start_ms <= ts_ms <= end_ms."""
        return self.db.execute(
            "SELECT ts_ms, import_wh, export_wh FROM meter_reading WHERE household=? AND ts_ms BETWEEN ? AND ? "
            "AND import_wh IS NOT NULL AND export_wh IS NOT NULL ORDER BY ts_ms", (household, start_ms, end_ms)).fetchall()

    def last_meter_counters_ms(self, household: str) -> int | None:
        return self.db.execute("SELECT max(ts_ms) FROM meter_reading WHERE household=? AND import_wh IS NOT NULL "
                               "AND export_wh IS NOT NULL", (household,)).fetchone()[0]

    def meter_readings(self, household: str, start_ms: int, end_ms: int) -> list[dict]:
        """Readings and gaps with start_ms <= slot_ms < end_ms, oldest first."""
        rows = self.db.execute("SELECT slot_ms, ts_ms, gap_reason, body FROM meter_reading WHERE household=? "
                               "AND slot_ms >= ? AND slot_ms < ? ORDER BY slot_ms", (household, start_ms, end_ms))
        return [{"slot_ms": slot, "ts_ms": ts, "gap": reason is not None, "reason": reason, **json.loads(body)}
                for slot, ts, reason, body in rows]

    def add_meter_check(self, check: dict) -> None:
        """Store one interval's cross-check (keys: METER_CHECK_COLUMNS; `circuits` a dict)."""
        row = {**check, "circuits": canonical_json(check["circuits"]), "circuits_complete": int(check["circuits_complete"])}
        with self._tx() as cur:
            cur.execute(f"INSERT OR REPLACE INTO meter_check VALUES ({','.join('?' * len(METER_CHECK_COLUMNS))})",
                        [row[c] for c in METER_CHECK_COLUMNS])

    def meter_checks(self, household: str, start_ms: int, end_ms: int) -> list[dict]:
        """Cross-checks of the intervals with start_ms <= start < end_ms, oldest first."""
        rows = self.db.execute(f"SELECT {', '.join(METER_CHECK_COLUMNS)} FROM meter_check WHERE household=? "
                               "AND start_ms >= ? AND start_ms < ? ORDER BY start_ms", (household, start_ms, end_ms))
        out = []
        for row in rows:
            check = dict(zip(METER_CHECK_COLUMNS, row))
            check["circuits"] = json.loads(check["circuits"])
            check["circuits_complete"] = bool(check["circuits_complete"])
            out.append(check)
        return out

    def last_meter_check_start(self, household: str) -> int | None:
        return self.db.execute("SELECT max(start_ms) FROM meter_check WHERE household=?", (household,)).fetchone()[0]

    def prune_meter(self, now_ms: int, raw_days: int, interval_days: int) -> dict[str, int]:
        """Meter readings are kept as long as raw messages, checks as long as interval energies."""
        with self._tx() as cur:
            deleted = {"meter_reading": cur.execute("DELETE FROM meter_reading WHERE slot_ms < ?",
                                                    (now_ms - raw_days * DAY_MS,)).rowcount}
            deleted["meter_check"] = cur.execute("DELETE FROM meter_check WHERE start_ms < ?",
                                                 (now_ms - interval_days * DAY_MS,)).rowcount if interval_days else 0
        return deleted


class BatchWriter:
    """Writes ingest batches (Storage.write) and the uplink's batches (form_batches, delete_batches)
    on a connection of their own, in a thread of their own: SQLite releases the GIL while it works
    and fsyncs, so the event loop receives and verifies the next messages meanwhile and never
    waits for the disk. One write at a time, in the order submitted."""

    def __init__(self, storage: Storage):
        self.storage = storage
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="gateway-writer")
        self._db = storage.connect(check_same_thread=False)  # used by that thread only, from here on

    def submit(self, verdicts: list[tuple[Verdict, int]], nodes: list[tuple]) -> Future:
        """Future of write()'s count; its exception is write()'s (the transaction was rolled back)."""
        return self._thread.submit(self.storage.write, verdicts, nodes, self._db)

    def form_batches(self, gateway_id: str, max_items: int, now_ms: int, max_batches: int) -> Future:
        """Future of Storage.form_batches."""
        return self._thread.submit(self.storage.form_batches, gateway_id, max_items, now_ms, max_batches, self._db)

    def delete_batches(self, gseqs: list[int]) -> Future:
        """Future of Storage.delete_batches."""
        return self._thread.submit(self.storage.delete_batches, gseqs, self._db)

    def close(self) -> None:
        self._thread.submit(self._db.close).result()
        self._thread.shutdown()


def node_rows(tracks: dict[str, NodeTrack]) -> list[tuple]:
    """node_state rows of the given nodes as they are now: a batch takes them when it is cut."""
    return [(node, t.max_seq, t.floor_seq, t.boot, t.last_seen_ms, t.fw, None if t.online is None else int(t.online))
            for node, t in tracks.items()]


def _message_rows(accepted: list[tuple[Verdict, int]]) -> list[tuple]:
    return [(v.node, v.msg["seq"], v.msg["t"], v.msg["boot"], v.time_ms, rx_ms, v.body) for v, rx_ms in accepted]


class _Transaction:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Cursor:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db.cursor()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
