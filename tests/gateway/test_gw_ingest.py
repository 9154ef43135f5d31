"""The ingest core and interval arithmetic, without I/O."""
from hypothesis import given, strategies as st

from gwkit import T0_MS, NodeSim, secret
from ghnode import wire
from gridhive.gateway.config import Channel, NodeEntry, Registry
from gridhive.gateway.energy import interval_start, split_energies, split_energy
from gridhive.gateway.ingest import ACCEPTED, DUPLICATE, REJECTED, STATUS, Ingest, Limits, RejectLog

MIN15 = 900_000


def registry():
    return Registry({n: NodeEntry(n, secret(n), f"h-{n}", channels={0: Channel(0, "grid", 63.0, True),
                                                                    1: Channel(1, "ev", 16.0)})
                     for n in ("n1", "n2")})


class World:
    """An Ingest with a dict standing in for storage."""

    def __init__(self):
        self.stored = set()
        self.ingest = Ingest(registry(), Limits(interval_ms=MIN15), lambda n, s: (n, s) in self.stored)

    def feed(self, item, rx_ms=None):
        topic, payload, msg = item
        v = self.ingest.receive(topic, payload, rx_ms if rx_ms is not None else msg.get("ts_ms", T0_MS))
        if v.outcome == ACCEPTED or v.quarantine:
            self.stored.add((v.node, v.msg["seq"]))
        return v

    def commit(self):
        self.ingest.stored()


def test_interval_start_aligns_to_the_hour():
    assert interval_start(T0_MS + 14 * 60_000 + 59_999, MIN15) == T0_MS
    assert interval_start(T0_MS + 15 * 60_000, MIN15) == T0_MS + MIN15


def test_a_reading_on_a_boundary_belongs_to_the_interval_that_ends_there():
    assert split_energy(T0_MS + 60_000, T0_MS + MIN15, 10, MIN15) == [(T0_MS, 10)]
    assert split_energy(T0_MS + 10 * 60_000, T0_MS + 20 * 60_000, 10, MIN15) == [(T0_MS, 5), (T0_MS + MIN15, 5)]


@given(start=st.integers(0, 10 * MIN15), length=st.integers(0, 20 * MIN15), wh=st.integers(0, 10**7))
def test_split_energy_conserves_every_wh(start, length, wh):
    parts = split_energy(T0_MS + start, T0_MS + start + length, wh, MIN15)
    assert sum(w for _, w in parts) == wh
    assert all(w > 0 and s % MIN15 == T0_MS % MIN15 for s, w in parts)
    assert [s for s, _ in parts] == sorted({s for s, _ in parts})


@given(start=st.integers(0, 10 * MIN15), length=st.integers(-MIN15, 3 * MIN15), imp=st.integers(0, 10**6),
       exp=st.integers(0, 10**6))
def test_split_energies_is_split_energy_of_both_counters(start, length, imp, exp):
    begin, end = T0_MS + start, T0_MS + start + length
    expected = {}
    for i, wh in enumerate((imp, exp)):
        for s, part in split_energy(begin, end, wh, MIN15):
            expected.setdefault(s, [0, 0])[i] += part
    assert split_energies(begin, end, imp, exp, MIN15) == [(s, i, e) for s, (i, e) in sorted(expected.items())]


def test_valid_messages_are_accepted_and_energy_is_split_by_interval():
    w, n1 = World(), NodeSim("n1")
    assert w.feed(n1.tele(T0_MS + 10 * 60_000)).outcome == ACCEPTED  # baseline
    v = w.feed(n1.tele(T0_MS + 20 * 60_000, add_in_wh=(100, 10), add_out_wh=(20, 0)))
    assert v.outcome == ACCEPTED and v.ack
    by = {(e.ch, e.start_ms): (e.import_wh, e.export_wh) for e in v.energy}
    assert by == {(0, T0_MS): (50, 10), (0, T0_MS + MIN15): (50, 10), (1, T0_MS): (5, 0), (1, T0_MS + MIN15): (5, 0)}
    assert w.ingest.tracks["n1"].max_seq == 2 and w.ingest.accepted["tele"] == 2


def test_duplicates_are_acked_again_but_counted_not_stored_twice():
    w, n1 = World(), NodeSim("n1")
    item = n1.tele(T0_MS)
    assert w.feed(item).outcome == ACCEPTED
    again = w.feed(item)  # still pending in this batch
    assert again.outcome == DUPLICATE and again.ack
    w.commit()
    assert w.feed(item).outcome == DUPLICATE  # now found in storage
    assert w.ingest.duplicates == 2 and not w.ingest.rejected


def test_a_late_message_below_the_highest_seq_is_still_accepted_once():
    w, n1 = World(), NodeSim("n1")
    first = n1.tele(T0_MS)
    second = n1.tele(T0_MS + 10_000)
    assert w.feed(second).outcome == ACCEPTED
    assert w.feed(first).outcome == ACCEPTED  # lower seq, never seen: not a duplicate
    assert w.feed(first).outcome == DUPLICATE


def test_forged_malformed_and_misrouted_messages_are_rejected_without_ack():
    w, n1 = World(), NodeSim("n1")
    topic, payload, msg = n1.tele(T0_MS)
    cases = {
        "bad_mac": (topic, wire.encode(msg, secret("n2"))),
        "not_json": (topic, b"{nope"),
        "too_large": (topic, b"x" * 5000),
        "missing_mac": (topic, wire.canonical(msg)),
        "unknown_node": ("gh/n9/tele", wire.encode({**msg, "node": "n9"}, secret("n9"))),
        "topic_mismatch": ("gh/n2/tele", payload),
        "bad_topic": ("gh/n1/cmd", payload),
        "bad_kind": (topic, wire.encode({**msg, "t": "weird"}, secret("n1"))),
    }
    for reason, (t, p) in cases.items():
        v = w.ingest.receive(t, p, T0_MS)
        assert (v.outcome, v.reason, v.ack) == (REJECTED, reason, False), reason
    assert w.ingest.rejected == {r: 1 for r in cases}
    assert w.ingest.tracks.get("n1") is None or w.ingest.tracks["n1"].max_seq == -1


def test_physically_impossible_readings_are_quarantined_and_acked():
    w, n1 = World(), NodeSim("n1")
    w.feed(n1.tele(T0_MS, add_in_wh=(1000, 10)))
    cases = [
        ("power_out_of_range", dict(power_w=(150_000, 0))),  # > 100 kW site limit
        ("power_out_of_range", dict(power_w=(0, 10_000))),  # ev circuit: 1.5 x 16 A x 400 V = 9.6 kW
        ("future_timestamp", dict(ts_ms=T0_MS + 3_600_000)),
    ]
    for reason, kw in cases:
        ts = kw.pop("ts_ms", T0_MS + 1000)
        v = w.feed(n1.tele(ts, **kw), rx_ms=T0_MS + 1000)
        assert (v.outcome, v.reason, v.ack, v.quarantine) == (REJECTED, reason, True, True)
    n1.in_wh[0] = 500  # below the accepted 1000
    v = w.feed(n1.tele(T0_MS + 2000, add_in_wh=(0, 0)))
    assert v.reason == "counter_decreased"
    n1.in_wh[0] = -3
    assert w.feed(n1.tele(T0_MS + 3000, add_in_wh=(0, 0))).reason == "negative_energy"
    bad_ch = n1.tele(T0_MS + 4000)
    bad_ch[2]["ch"][0]["n"] = 9
    assert w.feed((bad_ch[0], n1.sign(bad_ch[2]), bad_ch[2])).reason == "bad_schema"
    assert w.ingest.tracks["n1"].channels[0].in_wh == 1000  # rejected readings moved no baseline


def test_a_counter_reset_on_a_new_boot_starts_a_new_baseline():
    w, n1 = World(), NodeSim("n1", in_wh=(5000, 0))
    w.feed(n1.tele(T0_MS))
    n1.boot, n1.in_wh = 2, [0, 0]  # lost its state file
    v = w.feed(n1.tele(T0_MS + 60_000, add_in_wh=(3, 0)))
    assert v.outcome == ACCEPTED and v.counter_resets == 2 and v.energy == []  # both channels
    v = w.feed(n1.tele(T0_MS + 120_000, add_in_wh=(7, 0)))
    assert sum(e.import_wh for e in v.energy) == 7


def test_status_sets_the_boot_that_acks_and_commands_must_name():
    w, n1 = World(), NodeSim("n1", boot=77)
    v = w.feed(n1.status(True), rx_ms=T0_MS)
    assert v.outcome == STATUS and w.ingest.tracks["n1"].boot == 77 and w.ingest.tracks["n1"].online
    # After a reboot the node resends old-boot messages first: they must not roll the boot back.
    old = n1.tele(T0_MS)
    n1.boot = 78
    w.feed(n1.status(True), rx_ms=T0_MS)
    w.feed(old)
    assert w.ingest.tracks["n1"].boot == 78
    w.feed(n1.status(False), rx_ms=T0_MS)
    assert w.ingest.tracks["n1"].online is False and w.ingest.tracks["n1"].boot == 78


def test_a_replay_below_the_pruned_floor_is_refused():
    w, n1 = World(), NodeSim("n1")
    item = n1.tele(T0_MS)
    w.feed(item)
    w.ingest.tracks["n1"].floor_seq = 5
    w.stored.clear()
    v = w.feed(item)
    assert (v.outcome, v.reason, v.ack, v.quarantine) == (REJECTED, "replay", True, False)


def test_reject_log_speaks_once_per_node_and_reason_per_interval():
    log = RejectLog(60_000)
    assert log.should_log("n1", "bad_mac", 0) == 0
    assert log.should_log("n1", "bad_mac", 1000) is None
    assert log.should_log("n1", "not_json", 1000) == 0
    assert log.should_log("n1", "bad_mac", 59_999) is None
    assert log.should_log("n1", "bad_mac", 60_000) == 2  # two were suppressed
