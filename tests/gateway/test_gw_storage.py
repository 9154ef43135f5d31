"""SQLite storage: WAL, idempotence on (node, seq), aggregates, interval energy, retention, outbox."""
import json

from gwkit import T0_MS, NodeSim
from test_gw_ingest import MIN15, registry
from gridhive.gateway.ingest import ACCEPTED, Ingest, Limits
from gridhive.gateway.storage import DAY_MS, Storage


def setup(tmp_path):
    store = Storage(tmp_path / "g.sqlite3")
    ingest = Ingest(registry(), Limits(interval_ms=MIN15), store.is_known, store.load_tracks())
    return store, ingest


def feed(store, ingest, items, rx_ms=None):
    verdicts = []
    for topic, payload, msg in items:
        rx = rx_ms if rx_ms is not None else msg["ts_ms"]
        verdicts.append((ingest.receive(topic, payload, rx), rx))
    touched = {v.node for v, _ in verdicts if v.node in ingest.tracks}
    stored = store.commit([(v, rx) for v, rx in verdicts if v.outcome == ACCEPTED or v.quarantine],
                          {n: ingest.tracks[n] for n in touched})
    ingest.stored()
    return stored, verdicts


def test_wal_mode_and_indexes(tmp_path):
    store, _ = setup(tmp_path)
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    plan = " ".join(r[-1] for r in store.db.execute(
        "EXPLAIN QUERY PLAN SELECT body FROM message WHERE node='n1' AND time_ms >= 0 AND time_ms < 1"))
    assert "message_node_time" in plan


def test_a_batch_is_stored_once_with_aggregates_intervals_and_outbox(tmp_path):
    store, ingest = setup(tmp_path)
    n1 = NodeSim("n1")
    items = [n1.tele(T0_MS + i * 60_000, power_w=(1000 + i, 10), add_in_wh=(17, 3)) for i in range(31)]
    stored, _ = feed(store, ingest, items)
    assert stored == 31 and store.count("message") == 31 and store.count("outbox_item") == 31
    # The node resends everything (lost acks): nothing is stored, aggregated or queued twice.
    stored, verdicts = feed(store, ingest, items)
    assert stored == 0 and all(v.ack for v, _ in verdicts) and store.count("outbox_item") == 31
    intervals = store.interval_energy(T0_MS, T0_MS + DAY_MS, node="n1")
    assert sum(r["import_wh"] for r in intervals if r["ch"] == 0) == 17 * 30  # deltas after the baseline
    assert [r["start_ms"] for r in intervals if r["ch"] == 0] == [T0_MS, T0_MS + MIN15]
    minutes = store.minutes("n1", 0, T0_MS, T0_MS + DAY_MS)
    assert len(minutes) == 31 and minutes[5] == {"minute_ms": T0_MS + 5 * 60_000, "samples": 1,
                                                 "power_avg_w": 1005, "power_min_w": 1005, "power_max_w": 1005}
    assert [m["seq"] for m in store.readings("n1", T0_MS, T0_MS + 3 * 60_000)] == [1, 2, 3]
    households = store.household_energy(registry(), T0_MS, T0_MS + DAY_MS)
    # The reading at minute 15 closes the first interval: 15 deltas in each.
    assert households == {"h-n1": {T0_MS: (17 * 15, 0), T0_MS + MIN15: (17 * 15, 0)}}  # grid channel only


def test_without_an_uplink_nothing_is_queued(tmp_path):
    # A gateway with the uplink off: readings, aggregates and intervals as always, no outbox copies.
    store = Storage(tmp_path / "g.sqlite3", outbox=False)
    ingest = Ingest(registry(), Limits(interval_ms=MIN15), store.is_known, store.load_tracks())
    n1 = NodeSim("n1")
    stored, _ = feed(store, ingest, [n1.tele(T0_MS + i * 60_000, add_in_wh=(10, 0)) for i in range(5)])
    assert stored == store.count("message") == 5 and store.count("outbox_item") == 0
    assert sum(r["import_wh"] for r in store.interval_energy(T0_MS, T0_MS + DAY_MS, node="n1") if r["ch"] == 0) == 40


def test_a_batch_committed_again_stores_only_what_is_new(tmp_path):
    # The ingest core never passes a stored message twice; the storage is idempotent on its own
    # anyway: the batch's bulk insert fails, and it is filtered against the table and itself.
    store, ingest = setup(tmp_path)
    n1, n2 = NodeSim("n1"), NodeSim("n2")
    first = [(ingest.receive(*item[:2], item[2]["ts_ms"]), item[2]["ts_ms"]) for item in
             [n1.tele(T0_MS + i * 60_000, add_in_wh=(10, 0)) for i in range(3)]]
    assert store.commit(first, {}) == 3
    later = [(ingest.receive(*item[:2], item[2]["ts_ms"]), item[2]["ts_ms"]) for item in
             [n1.tele(T0_MS + 180_000, add_in_wh=(10, 0)), n2.tele(T0_MS)]]
    assert store.commit(first[1:] + later + later[:1], {}) == 2  # two stored, one listed twice
    assert store.count("message") == store.count("outbox_item") == 5
    assert sum(r["import_wh"] for r in store.interval_energy(T0_MS, T0_MS + DAY_MS, node="n1") if r["ch"] == 0) == 30
    assert sum(m["samples"] for m in store.minutes("n1", 0, T0_MS, T0_MS + DAY_MS)) == 4


def test_state_survives_a_restart(tmp_path):
    store, ingest = setup(tmp_path)
    n1 = NodeSim("n1", boot=9)
    feed(store, ingest, [n1.status()], rx_ms=T0_MS)
    feed(store, ingest, [n1.tele(T0_MS), n1.tele(T0_MS + 60_000, add_in_wh=(5, 0))])
    assert store.next_cid("n1") == 1 and store.next_cid("n1") == 2
    store.close()
    store, ingest = setup(tmp_path)
    track = ingest.tracks["n1"]
    assert (track.max_seq, track.boot, track.online, track.channels[0].in_wh) == (2, 9, True, 6)
    assert store.next_cid("n1") == 3
    _, verdicts = feed(store, ingest, [n1.tele(T0_MS + 120_000, add_in_wh=(4, 0))])
    assert sum(e.import_wh for e in verdicts[0][0].energy if e.ch == 0) == 4


def test_retention_prunes_and_raises_the_replay_floor(tmp_path):
    store, ingest = setup(tmp_path)
    n1 = NodeSim("n1")
    old = [n1.tele(T0_MS + i * 60_000) for i in range(3)]
    feed(store, ingest, old)
    feed(store, ingest, [n1.tele(T0_MS + 8 * DAY_MS)])
    deleted = store.prune(T0_MS + 8 * DAY_MS, raw_days=7, minute_days=90, interval_days=0, tracks=ingest.tracks)
    assert deleted["message"] == 3 and deleted["interval_energy"] == 0 and store.count("message") == 1
    assert ingest.tracks["n1"].floor_seq == 3
    _, verdicts = feed(store, ingest, old[:1])
    assert verdicts[0][0].reason == "replay"
    deleted = store.prune(T0_MS + 100 * DAY_MS, 7, 90, 30, ingest.tracks)
    assert deleted["minute"] == 8 and deleted["interval_energy"] > 0


def test_outbox_batches_are_numbered_persistently_and_deleted_on_ack(tmp_path):
    store, ingest = setup(tmp_path)
    n1 = NodeSim("n1")
    feed(store, ingest, [n1.tele(T0_MS + i * 1000) for i in range(250)])
    formed = store.form_batches("gw1", 100, T0_MS, 10)
    assert [g for g, _ in formed] == [1, 2, 3] and store.outbox_depth() == (0, 3)
    batch = json.loads(formed[0][1])
    assert list(batch) == ["gseq", "gw", "items", "ts_ms", "v"] and batch["gw"] == "gw1"
    assert [i["seq"] for i in batch["items"]] == list(range(1, 101))
    assert formed[0][1] == json.dumps(batch, sort_keys=True, separators=(",", ":")).encode()  # canonical
    assert store.delete_batches([1, 2, 3, 99]) == 3
    feed(store, ingest, [n1.tele(T0_MS + 999_000)])
    store.close()
    store, _ = setup(tmp_path)
    assert [g for g, _ in store.form_batches("gw1", 100, T0_MS, 10)] == [4]  # never reuses a gseq
