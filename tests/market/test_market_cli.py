"""`gridhive ctl market ...` on a store written by the market loop."""
import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from gridhive.gridops import ConsentRegistry
from gridhive.market import book_depth
from gridhive.market.cli import app
from gridhive.market.loop import MarketLoop, MarketStore
from market_fixtures import T0, bid, offer
from test_market_loop import CONFIG, HOUSES, KEYS, LEAD_MS, ListSource

runner = CliRunner()


def test_book_depth_accumulates_towards_the_better_prices():
    levels = book_depth([bid("b1", "x", 100, 20), bid("b2", "y", 50, 10),
                         offer("o1", "z", 70, 10), offer("o2", "w", 30, 15)])
    assert [tuple(level) for level in levels] == [(10, 50, 70, 150, 70), (15, 0, 30, 100, 100),
                                                  (20, 100, 0, 100, 100)]


def make_store(tmp_path):
    store = MarketStore(tmp_path / "market.sqlite")
    source = ListSource()
    before_gate = T0 - LEAD_MS - 10
    for order in (bid("A1", "alice", 1_000, 25, ts_ms=before_gate),
                  offer("B1", "bob", 600, 8, ts_ms=before_gate),
                  offer("C1", "carol", 600, 12, ts_ms=before_gate)):
        source.send(order)
    loop = MarketLoop(CONFIG, HOUSES, store, source, Ed25519PrivateKey.generate(),
                      {m: k.public_key() for m, k in KEYS.items()},
                      {T0: {"alice": -1_000, "bob": 600, "carol": 400}}.get)
    loop.tick(T0 - LEAD_MS)
    loop.tick(T0 + CONFIG.interval_ms)
    store.close()
    return tmp_path / "market.sqlite"


def test_ctl_market_commands(tmp_path):
    db = str(make_store(tmp_path))
    shown = runner.invoke(app, ["show", "--db", db, "--json"])
    assert shown.exit_code == 0, shown.output
    summary = json.loads(shown.output)
    assert summary["state"] == "settled" and summary["energy_wh"] == 1_000
    assert summary["interval_start"] == "2024-06-01 00:00 UTC" and len(summary["signature"]) == 128
    same = runner.invoke(app, ["show", "2024-06-01T00:00Z", "--db", db, "--json"])
    assert json.loads(same.output) == summary

    assert "demand" in runner.invoke(app, ["depth", "--db", db]).output
    trades = runner.invoke(app, ["results", str(T0), "--db", db])
    assert trades.exit_code == 0 and "carol" in trades.output
    statement = runner.invoke(app, ["statements", "--member", "alice", "--db", db])
    assert "alice" in statement.output and "40.00" in statement.output  # 18 c vs 30 c / kWh
    assert runner.invoke(app, ["results", str(T0 + 900_000), "--db", db]).exit_code == 1
    assert runner.invoke(app, ["show", "--db", str(tmp_path / "none.sqlite")]).exit_code != 0

    consents = ConsentRegistry()
    consents.grant("carol", "dso", "metering", T0 - 1)
    consents.save(tmp_path / "consent.jsonl")
    exported = runner.invoke(app, ["export", "--out", str(tmp_path / "out"), "--db", db])
    assert exported.exit_code == 0, exported.output
    document = json.loads((tmp_path / "out" / "export.json").read_text())
    assert document["metering"][0]["net_export_wh"] == 0  # 3 households on f1: shown
    assert [r["member_id"] for r in document["household_metering"]] == ["carol"]
