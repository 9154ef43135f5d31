"""The gateway's ledger agent (gridhive.gateway.ledger_agent): its pure decisions, then the agent
against a real validator process reading a real gateway database — each household's interval
energy attested once and its order entered once, also after the agent restarts."""
import time

import pytest

from gridhive.gateway.config import ConfigError, parse_config
from gridhive.gateway.energy import interval_start
from gridhive.gateway.ledger_agent import Chain, LedgerAgent, _agent_setup, due_readings, next_open_interval_ms, next_orders
from gridhive.gateway.storage import Storage
from gridhive.ledger.client import LedgerClient
from ledger_cluster import Cluster

PARAMS = {"interval_s": 10, "gate_closure_s": 2, "reading_grace_s": 8}
CHAIN = Chain.from_genesis({"chain_id": "t", "params": PARAMS})


def test_readings_are_due_after_the_delay_and_only_within_the_grace():
    energy = {"h1": {0: (5, 0), 10_000: (7, 1)}, "h2": {10_000: (0, 9)}}
    assert due_readings(energy, 10_500, CHAIN, delay_ms=1_000) == []          # interval 0 ended 0.5 s ago
    assert due_readings(energy, 11_000, CHAIN, delay_ms=1_000) == [
        {"household": "h1", "interval_start_s": 0, "import_wh": 5, "export_wh": 0}]
    assert due_readings(energy, 18_000, CHAIN, delay_ms=1_000) == []          # past the 8 s grace
    assert [r["household"] for r in due_readings(energy, 21_000, CHAIN, delay_ms=1_000)] == ["h1", "h2"]


def test_the_next_open_interval_respects_gate_closure():
    assert next_open_interval_ms(0, CHAIN) == 10_000
    assert next_open_interval_ms(7_999, CHAIN) == 10_000
    assert next_open_interval_ms(8_000, CHAIN) == 20_000   # the gate of 10 s closed at 8 s


def test_orders_follow_the_metered_history():
    history = {0: (100, 0), 10_000: (300, 0), 20_000: (999, 0)}  # the 20 s interval has not ended
    bids = next_orders("h1", True, history, 25_000, CHAIN, history_intervals=4)
    assert len(bids) == 1 and bids[0]["side"] == "buy" and bids[0]["energy_wh"] == 200
    assert bids[0]["interval_start_s"] == 30
    feed_in, retail = CHAIN.market.feed_in_minor_per_kwh, CHAIN.market.retail_minor_per_kwh
    assert feed_in <= bids[0]["price_minor_per_kwh"] <= retail
    surplus = {0: (0, 80), 10_000: (0, 80)}
    offer = next_orders("h1", True, surplus, 25_000, CHAIN, history_intervals=4)
    assert offer[0]["side"] == "sell" and offer[0]["energy_wh"] == 80
    assert offer[0]["price_minor_per_kwh"] == feed_in   # a certain surplus is offered at the floor
    assert next_orders("h1", False, surplus, 25_000, CHAIN, history_intervals=4) == []  # consumers never sell
    assert next_orders("h1", True, {}, 25_000, CHAIN, history_intervals=4) == []


def _config(tmp_path, net, node, attest_delay_s=1, interval_s=10):
    raw = {"gateway": {"id": "gw1", "data_dir": str(tmp_path / "gw")},
           "storage": {"interval_s": interval_s},
           "ledger": {"api": node.api, "genesis": str(net.dir / "genesis.json"),
                      "key_file": str(node.dir / "validator.key"), "attest_delay_s": attest_delay_s,
                      "history_intervals": 2, "tick_s": 1.0},
           "nodes": {n: {"secret_hex": "11" * 32, "household": h, "member_key_file": str(net.member_keys[h]),
                         "channels": [{"n": 0, "name": "grid", "grid": True}]}
                     for n, h in (("n-a", "h-a"), ("n-b", "h-b"))}}
    (tmp_path / "gw").mkdir(exist_ok=True)
    return parse_config(raw, tmp_path, env={})


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path, 1, params=PARAMS, members=[("h-a", 0, "prosumer"), ("h-b", 0, "consumer")])
    c.start_all()
    c.wait_ready()
    yield c
    c.stop_all()


def test_setup_names_the_bad_key(tmp_path, cluster):
    net, node = cluster.net, cluster.net.nodes[0]
    with pytest.raises(ConfigError, match="storage.interval_s"):
        _agent_setup(_config(tmp_path, net, node, interval_s=15))
    with pytest.raises(ConfigError, match="ledger.attest_delay_s"):
        _agent_setup(_config(tmp_path, net, node, attest_delay_s=8))


def test_agent_attests_and_orders_once_through_a_real_validator(tmp_path, cluster):
    net, node = cluster.net, cluster.net.nodes[0]
    cfg = _config(tmp_path, net, node)
    chain, gateway_key, members = _agent_setup(cfg)
    storage = Storage(cfg.db_path)
    while not 1_500 <= time.time() * 1000 % 10_000 <= 5_000:   # just after a boundary: a reading is due
        time.sleep(0.1)
    now_ms = int(time.time() * 1000)
    ended = interval_start(now_ms, 10_000) - 10_000
    rows = [("n-a", 0, start, 0, 50) for start in (ended - 10_000, ended)] + \
           [("n-b", 0, start, 40, 0) for start in (ended - 10_000, ended)]
    storage.db.executemany("INSERT INTO interval_energy VALUES (?,?,?,?,?)", rows)
    client = LedgerClient(node.api)
    agent = LedgerAgent(cfg, client, storage, chain, gateway_key, members)

    lines = agent.tick(now_ms)
    assert len(lines) == 4, lines
    assert agent.counts == {"reading.submitted": 2, "reading.accepted": 2, "order.submitted": 2, "order.accepted": 2}
    # Only the interval still inside the reading grace is attested, with the metered figures.
    assert client.state("readings", f"h-a/{ended // 1000}")["export_wh"] == 50
    assert client.state("readings", f"h-b/{ended // 1000}")["import_wh"] == 40
    assert client.state("readings", f"h-a/{(ended - 10_000) // 1000}") is None
    target = next_open_interval_ms(now_ms, chain) // 1000
    orders = [client.state("orders", oid) for oid in client.state("intervals", str(target))["orders"]]
    assert sorted((o["household"], o["side"], o["energy_wh"]) for o in orders) == [
        ("h-a", "sell", 50), ("h-b", "buy", 40)]

    # Done is read back from the chain: neither this agent nor a restarted one repeats anything.
    assert agent.tick(now_ms + 200) == []
    again = LedgerAgent(cfg, LedgerClient(node.api), storage, chain, gateway_key, members)
    assert again.tick(now_ms + 400) == []
    storage.close()
