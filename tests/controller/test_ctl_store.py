"""The storage layer, run on SQLite and on a real PostgreSQL server (`db_url` gives both)."""
import itertools
import json
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridhive.controller.store import open_store
from gridhive.controller.uplink import GatewayStatus, NodeStatus, Uplink, parse_uplink

from ctl_helpers import batch, node_message, payload


def uplink(gw, gseq, items):
    return parse_uplink(gw, payload(batch(gw, gseq, items)))


@pytest.fixture
def store(db_url):
    s = open_store(db_url)
    yield s
    s.close()


def test_a_batch_is_stored_once_by_gateway_and_gseq(store):
    up = uplink("gw-1", 1, [node_message("house-1", s) for s in range(1, 6)])
    first, again = store.commit_batches([up], 1_000) + store.commit_batches([up], 2_000)
    assert not first.duplicate and first.stored == 5
    assert again.duplicate and again.stored == 0
    assert store.message_counts() == {"house-1": 5}
    assert store.batch_keys() == {("gw-1", 1)}
    assert store.gateways()[0]["batches"] == 1 and store.gateways()[0]["last_seen_ms"] == 1_000


def test_items_are_stored_once_by_node_and_seq_across_batches_and_gateways(store):
    a = uplink("gw-1", 1, [node_message("house-1", 1), node_message("house-1", 2)])
    b = uplink("gw-1", 2, [node_message("house-1", 2), node_message("house-1", 3)])   # 2 resent
    c = uplink("gw-2", 1, [node_message("house-1", 3), node_message("house-9", 1)])   # node moved gateway
    results = store.commit_batches([a, b, c, b], 5_000)
    assert [(r.stored, r.duplicates, r.duplicate) for r in results] == [(2, 0, False), (1, 1, False),
                                                                         (1, 1, False), (0, 0, True)]
    assert [m["seq"] for m in store.messages("house-1")] == [1, 2, 3]
    msg = store.messages("house-1")[1]
    assert (msg["gw"], msg["gseq"], msg["t"], msg["boot"]) == ("gw-1", 1, "tele", 7)
    nodes = {n["node"]: n for n in store.nodes()}
    assert nodes["house-1"]["gw"] == "gw-2" and nodes["house-1"]["last_seq"] == 3
    assert {g["gw"]: g["items"] for g in store.gateways()} == {"gw-1": 3, "gw-2": 1}


def test_the_stored_payload_is_the_node_message(store):
    import json

    msg = node_message("house-1", 9)
    store.commit_batches([uplink("gw-1", 1, [msg])], 0)
    assert json.loads(store.messages("house-1")[0]["payload"]) == msg


def test_latest_message_of_a_type_per_node(store):
    items = [node_message("house-1", 1), node_message("house-1", 2), node_message("house-1", 3, "health"),
             node_message("house-2", 5)]
    store.commit_batches([uplink("gw-1", 1, items)], 0)
    assert [(m["node"], m["seq"]) for m in store.latest("tele")] == [("house-1", 2), ("house-2", 5)]
    assert [(m["node"], m["seq"]) for m in store.latest("health")] == [("house-1", 3)]
    assert store.latest("reply") == []


def test_status_items_and_nullable_health_fields(store):
    items = [node_message("house-1", 0, "status") | {"seq": 99},   # a stray seq on a status: registry only
             node_message("house-1", 5, "health", rssi_dbm=None, error=None)]
    result, = store.commit_batches([uplink("gw-1", 1, items)], 0)
    assert result.stored == 1 and [m["seq"] for m in store.messages()] == [5]
    node = store.nodes()[0]
    assert node["online"] is True and node["rssi_dbm"] is None and node["last_seq"] == 5


def test_a_health_error_the_registry_could_not_store_is_refused_by_the_parser(store):
    # Found by the property test below: an int beyond 64 bits in `error` failed every resend.
    items = [node_message("house-1", 1, "health", error=2 ** 70), node_message("house-1", 2, "health", error="cfg")]
    up = uplink("gw-1", 1, items)
    assert up.rejected == ((0, "item_bad_field"),)
    assert store.commit_batches([up], 0)[0].stored == 1 and store.nodes()[0]["error"] == "cfg"


def test_a_group_is_one_transaction(store):
    good = uplink("gw-1", 1, [node_message("house-1", 1)])
    # Built past the parser (which would refuse it): a seq no 64-bit column can hold.
    bad = node_message("house-1", 2) | {"seq": 2 ** 70}
    poison = Uplink("gw-1", 2, 0, (bad,), (json.dumps(bad, sort_keys=True, separators=(",", ":")),))
    with pytest.raises(Exception):
        store.commit_batches([good, poison], 0)
    assert store.batch_keys() == set() and store.message_counts() == {} and store.gateways() == []
    assert store.commit_batches([good], 0)[0].stored == 1      # the store is still usable


def test_registry_from_batches_and_status(store):
    store.commit_batches([uplink("gw-1", 1, [node_message("house-1", 4, "health", fw="1.3.0", rssi_dbm=-55),
                                             node_message("house-2", 1)])], 1_000)
    store.apply_status(GatewayStatus("gw-1", True, "0.9.0", (NodeStatus("house-1", True, 1_500, None),
                                                             NodeStatus("house-3", False, None, "1.0.0"))), 2_000)
    gw = store.gateways()[0]
    assert gw["online"] is True and gw["fw"] == "0.9.0" and gw["status_ms"] == 2_000
    nodes = {n["node"]: n for n in store.nodes()}
    assert set(nodes) == {"house-1", "house-2", "house-3"}
    assert nodes["house-1"]["fw"] == "1.3.0" and nodes["house-1"]["rssi_dbm"] == -55
    assert nodes["house-1"]["online"] is True and nodes["house-1"]["safe_mode"] is False
    assert nodes["house-3"]["online"] is False and nodes["house-3"]["fw"] == "1.0.0"
    assert nodes["house-2"]["online"] is None and nodes["house-2"]["fw"] is None


def test_data_survives_reopening(db_url):
    s = open_store(db_url)
    s.commit_batches([uplink("gw-1", 1, [node_message("house-1", 1)])], 0)
    s.close()
    s = open_store(db_url)
    assert s.batch_keys() == {("gw-1", 1)} and s.commit_batches([uplink("gw-1", 1, [])], 0)[0].duplicate
    s.close()


def test_postgres_store_reconnects_after_the_server_drops_it(postgres_server):
    import psycopg

    url = postgres_server.new_database()
    s = open_store(url)
    dbname = url.rsplit("/", 1)[1]
    with psycopg.connect(postgres_server.url(), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (dbname,))
    with pytest.raises(psycopg.OperationalError):
        s.commit_batches([uplink("gw-1", 1, [node_message("house-1", 1)])], 0)
    assert s.commit_batches([uplink("gw-1", 1, [node_message("house-1", 1)])], 0)[0].stored == 1
    s.close()


def test_database_urls(tmp_path):
    with pytest.raises(ValueError, match="unsupported database URL scheme 'mysql'") as refused:
        open_store("mysql://user:secret@host/db")
    assert "secret" not in str(refused.value)  # the message never shows a URL's password
    with pytest.raises(FileNotFoundError):
        open_store(str(tmp_path / "missing.db"), create=False)
    open_store(f"sqlite:///{tmp_path}/a/b.db").close()
    assert (tmp_path / "a" / "b.db").exists()


_BASE = {kind: node_message("house-1", 1, kind) for kind in ("tele", "health", "evt", "status")}
_BASE["reply"] = node_message("house-1", 1, "reply", cid=1, ok=True, relay=0, state="on")
_text = st.text(alphabet=string.printable[:95], max_size=12)
_scalar = st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | _text
_gseq = itertools.count(1)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(sorted(_BASE)),
                          st.dictionaries(st.sampled_from(["seq", "ts_ms", "boot", "rssi_dbm", "heap_free_b", "fw",
                                                           "error", "online", "safe_mode", "x"]), _scalar, max_size=4)),
                min_size=1, max_size=6))
def test_every_batch_the_parser_accepts_can_be_stored(store, changes):
    """Whatever passes validation must never fail in the database (a failure would never be acked)."""
    items = [_BASE[kind] | fields for kind, fields in changes]
    up = uplink("gw-1", next(_gseq), items)
    result, = store.commit_batches([up], 0)
    assert result.stored <= len(up.items)
