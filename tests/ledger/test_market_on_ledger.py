"""The market runs on the ledger (LEDGER.md §3.3–§3.4, MARKET.md "The market on the ledger"), all
real processes: 4 validators, members admitted by the operator's certificates, their signed orders,
their gateways' reading attestations, and the controller's market loop (`python -m gridhive.market
serve`) clearing and settling. The chain's trades are the market core's clearing of the same book;
money and energy are conserved; a clearing that differs from the re-execution is rejected by every
validator; a settled trade's provenance resolves to final transactions; `gridhive ctl market`
shows it all from the ledger."""
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gridhive.ledger.codec import hash_value
from gridhive.ledger.config import load_key
from gridhive.ledger.crypto import SigningKey
from gridhive.ledger.rules import TRADE_KEYS
from gridhive.ledger.tx import make_cert, make_tx, tx_id
from gridhive.market import Community, MarketConfig, Member, Order, Side, clear, to_plain
from gridhive.market.cli import app as market_cli
from ledger_cluster import Cluster

INTERVAL_S, GATE_S, GRACE_S = 10, 2, 3
PARAMS = {"interval_s": INTERVAL_S, "gate_closure_s": GATE_S, "reading_grace_s": GRACE_S,
          "fee_same_feeder_minor_per_kwh": 20, "fee_cross_feeder_minor_per_kwh": 60}
# household: (role, its gateway = validator index, network fields of its certificate)
HOUSEHOLDS = {"h-a": ("prosumer", 0, {"feeder": "f1"}), "h-b": ("prosumer", 1, {"feeder": "f1"}),
              "h-c": ("consumer", 2, {"feeder": "f1", "max_import_w": 36_000}),    # 100 Wh in 10 s
              "h-d": ("consumer", 3, {"feeder": "f2"})}
ORDERS = [("h-a", "sell", 300, 500), ("h-a", "sell", 200, 900), ("h-b", "sell", 250, 700),
          ("h-c", "buy", 400, 1_800), ("h-d", "buy", 500, 1_200), ("h-d", "buy", 100, 600)]
READINGS = {"h-a": (0, 450), "h-b": (0, 100), "h-c": (100, 0), "h-d": (700, 0)}    # (import, export) Wh
RESERVED = ("utility", "dso", "escrow")


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path, 4, params=PARAMS)
    yield c
    c.stop_all()


def start_loop(c: Cluster, tmp_path: Path, n: int) -> subprocess.Popen:
    log = open(tmp_path / f"market-loop-{n}.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "gridhive.market", "serve",
                             "--ledger", f"http://{c.net.nodes[n].api}",
                             "--operator-key", str(c.net.dir / "operator.key"), "--poll-ms", "300"],
                            stdout=log, stderr=log, cwd=Path(__file__).resolve().parents[2])
    log.close()
    return proc


def wait_for(what, check, timeout_s: float, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if proc is not None:
            assert proc.poll() is None, f"the market loop exited:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{what} not within {timeout_s} s" + (
            f":\n{log.read_text()[-3000:]}" if log else "")
        time.sleep(0.1)


def sleep_until(unix_s: float) -> None:
    time.sleep(max(0.0, unix_s - time.time()))


def test_the_controller_loop_clears_and_settles_on_the_ledger(cluster, tmp_path):
    c = cluster
    c.start_all()
    c.wait_ready()
    api, net = c.clients, c.net
    gateways = [load_key(node.dir / "validator.key") for node in net.nodes]   # each gateway is an authority
    start = math.ceil((time.time() + 8) / INTERVAL_S) * INTERVAL_S            # gate open for ≥ 6 s

    # Members: the operator certifies household, key, gateway and the DSO's network fields.
    members = {h: SigningKey.generate() for h in HOUSEHOLDS}
    admits = [make_tx(members[h], net.chain_id, "admit", 0, make_cert(
        net.operator, net.chain_id, h, members[h].public_hex, gateways[gw].public_hex, role, **network))
        for h, (role, gw, network) in HOUSEHOLDS.items()]
    for i, tx in enumerate(admits):
        assert api[i].submit(tx)["accepted"]
    for tx in admits:
        api[0].wait_final(tx_id(tx), 15)
    assert api[3].state("members", "h-c")["max_import_w"] == 36_000

    # Orders, signed by the members, entered through different validators.
    nonces = dict.fromkeys(HOUSEHOLDS, 1)
    order_ids = []
    for i, (h, side, energy_wh, price) in enumerate(ORDERS):
        body = {"interval_start_s": start, "side": side, "energy_wh": energy_wh, "price_minor_per_kwh": price}
        tx = make_tx(members[h], net.chain_id, "order", nonces[h], body)
        nonces[h] += 1
        result = api[i % 4].submit(tx)
        assert result["accepted"], result
        order_ids.append(result["tx_id"])
    for tid in order_ids:
        api[1].wait_final(tid, 15)
    assert time.time() < start - GATE_S, "the orders must be final before the gate closes"
    before = {k: api[0].account(k) for k in [*(m.public_hex for m in members.values()), *RESERVED]}

    # Gate closed: a forged clearing (not the re-execution) is refused by every validator.
    sleep_until(start - GATE_S + 0.5)
    wait_for("a final block past the gate", lambda: c.status(0)["last_block_time_ms"] >= (start - GATE_S) * 1000, 10)
    forged = make_tx(net.operator, net.chain_id, "clearing", 0,
                     {"interval_start_s": start, "result_hash": hash_value({"trades": []})})
    for i in range(4):
        assert api[i].submit(forged)["reason"] in (None, "duplicate")
    wait_for("clearing_mismatch on every validator",
             lambda: all(c.status(i)["rejections"].get("clearing_mismatch", 0) >= 1 for i in range(4)), 20)
    wait_for("the forged clearing out of every mempool",                              # and in no block
             lambda: all(api[i].tx(tx_id(forged))["status"] == "unknown" for i in range(4)), 10)
    assert api[0].state("intervals", str(start))["status"] == "open"

    # The controller's market loop, a process of its own, clears the interval.
    loop = start_loop(c, tmp_path, 0)
    log = tmp_path / "market-loop-0.log"
    cleared = wait_for("the clearing", lambda: (api[2].state("intervals", str(start)) or {}).get("status") == "cleared",
                       20, loop, log)
    assert cleared
    interval = api[2].state("intervals", str(start))

    # The chain's trades are the market core's clearing of the same book, mapped independently here.
    records = {oid: api[3].state("orders", oid) for oid in interval["orders"]}
    assert sorted(records) == sorted(order_ids)
    book = [Order(oid, r["household"], Side.BID if r["side"] == "buy" else Side.OFFER, r["energy_wh"],
                  r["price_minor_per_kwh"], r["ts_ms"], start * 1000) for oid, r in records.items()]
    community = Community(tuple(Member(h, network["feeder"], network.get("max_import_w"), None, role == "prosumer")
                                for h, (role, _, network) in HOUSEHOLDS.items()))
    config = MarketConfig(400, 2075, fee_same_feeder_minor_per_kwh=20, fee_cross_feeder_minor_per_kwh=60,
                          interval_ms=INTERVAL_S * 1000, gate_closure_lead_ms=GATE_S * 1000)
    expected = clear(book, config, community, start * 1000)
    on_chain = [api[1].state("trades", tid) for tid in interval["trades"]]
    assert [{k: t[k] for k in TRADE_KEYS} for t in on_chain] == to_plain(expected.trades)
    assert interval["clearing"]["curtailed_wh"] == expected.curtailed_wh > 0          # h-c's connection limit
    assert len(on_chain) >= 3 and {t["fee_minor_per_kwh"] for t in on_chain} == {20, 60}

    # A loop killed between clearing and settlement is simply started again: nothing is repeated.
    loop.send_signal(signal.SIGKILL)
    loop.wait(10)
    loop = start_loop(c, tmp_path, 1)
    log = tmp_path / "market-loop-1.log"

    # The gateways attest their households' metered energy after the interval, within the grace.
    sleep_until(start + INTERVAL_S + 0.2)
    readings = []
    for h, (import_wh, export_wh) in READINGS.items():
        gw = gateways[HOUSEHOLDS[h][1]]
        tx = make_tx(gw, net.chain_id, "reading", api[0].account(gw.public_hex)["nonce"],
                     {"household": h, "interval_start_s": start, "import_wh": import_wh, "export_wh": export_wh})
        result = api[HOUSEHOLDS[h][1]].submit(tx)
        assert result["accepted"], result
        readings.append(result["tx_id"])
    for tid in readings:
        api[0].wait_final(tid, 15)

    wait_for("the settlement", lambda: api[0].state("intervals", str(start))["status"] == "settled", 25, loop, log)
    settled = api[0].state("intervals", str(start))
    assert api[0].state("market", "unsettled") == [] and api[0].state("market", "last_settled") == start

    # Money and energy conserved across members, utility, DSO and escrow; each meter settled exactly.
    after = {k: api[0].account(k) for k in before}
    money = {k: after[k]["balance_minor"] - before[k]["balance_minor"] for k in before}
    energy = {k: after[k].get("energy_wh", 0) - before[k].get("energy_wh", 0) for k in before}
    assert sum(money.values()) == 0 and sum(energy.values()) == 0
    for h, (import_wh, export_wh) in READINGS.items():
        assert energy[members[h].public_hex] == import_wh - export_wh
    assert money["dso"] == sum(t["fee_minor"] for t in (api[0].state("trades", tid) for tid in settled["trades"])) > 0
    assert money["escrow"] == 0 and money["utility"] != 0
    assert min(money.values()) < 0 <= min(b["balance_minor"] for b in before.values())   # debts are on chain

    # Provenance of a settled trade: readings, orders, clearing and settlement, all in final blocks.
    trade_id = settled["trades"][0]
    prov = api[2].provenance(trade_id)
    p = prov["provenance"]
    assert p["trade"]["status"] == "settled" and p["settlement_tx"] == settled["settlement_tx"]
    assert p["clearing_tx"] == interval["clearing_tx"] and p["buyer"]["order"]["tx"] in order_ids
    assert p["seller"]["reading"]["tx"] in readings and p["buyer"]["reading"]["tx"] in readings
    assert p["seller"]["member"]["tx"] in {tx_id(tx) for tx in admits}
    assert set(p["txs"]) >= {p["clearing_tx"], p["settlement_tx"], p["buyer"]["order"]["tx"],
                             p["seller"]["order"]["tx"]}
    assert all(loc is not None for loc in prov["tx_locations"].values())

    # `gridhive ctl market …` shows it from the ledger.
    runner, ledger = CliRunner(), ["--ledger", net.nodes[3].api]
    shown = runner.invoke(market_cli, ["show", str(start), "--json", *ledger])
    assert shown.exit_code == 0, shown.output
    summary = json.loads(shown.output)
    assert (summary["state"], summary["trades"], summary["energy_wh"]) == (
        "settled", len(on_chain), sum(t["energy_wh"] for t in on_chain))
    assert json.loads(runner.invoke(market_cli, ["show", "--json", *ledger]).output)["interval_start_s"] == start
    assert "demand" in runner.invoke(market_cli, ["depth", str(start), *ledger]).output
    results = runner.invoke(market_cli, ["results", str(start), *ledger])
    assert results.exit_code == 0 and "h-c" in results.output and "settled" in results.output
    window = ["--since", str(start - INTERVAL_S), "--until", str(start + INTERVAL_S)]
    statement = runner.invoke(market_cli, ["statements", "--member", "h-d", *window, *ledger])
    assert statement.exit_code == 0 and "h-d" in statement.output and "h-a" not in statement.output
    exported = runner.invoke(market_cli, ["export", "--out", str(tmp_path / "export"), *window, *ledger,
                                          "--consents", str(tmp_path / "none.jsonl")])
    assert exported.exit_code == 0, exported.output
    assert json.loads((tmp_path / "export" / "export.json").read_text())["metering"]

    loop.send_signal(signal.SIGTERM)
    assert loop.wait(15) == 0
    lines = log.read_text()
    assert f"settlement of {start}" in lines and f"clearing of {start}" not in lines   # the restarted loop
    assert c.assert_one_chain() >= 1
