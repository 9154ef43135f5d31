"""LEDGER.md §3.3 with the market contract on random books: whatever orders and readings the
ledger admits, the clearing and the settlement the rules compute apply (the contract never fails
on an admitted book), and settlement conserves money and energy across members, utility, DSO and
escrow, each household settling exactly its meter."""
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger_world import INTERVAL_S, World
from test_ledger_state import END_MS, GATE_MS, SETTLE_MS, clear, clearing_tx, order, reading, settle_tx

HOUSEHOLDS = [f"h{i}" for i in range(6)]
RESERVED = ("utility", "dso", "escrow")


@st.composite
def markets(draw):
    orders = [(draw(st.sampled_from(HOUSEHOLDS)), draw(st.sampled_from(["buy", "sell"])), draw(st.integers(1, 5_000)),
               draw(st.sampled_from([400, 1000, 2075]) | st.integers(400, 2075)))
              for _ in range(draw(st.integers(0, 14)))]
    readings = {h: (draw(st.integers(0, 8_000)), draw(st.integers(0, 8_000)))
                for h in HOUSEHOLDS if draw(st.booleans())}
    params = {"mechanism": draw(st.sampled_from(["uniform", "pay_as_bid", "mean_bid", "pairwise_midpoint"])),
              "fee_same_feeder_minor_per_kwh": draw(st.integers(0, 50))}
    return orders, readings, params


def snapshot(w):
    names = [k.public_hex for k in w.members.values()] + list(RESERVED)
    return {n: ((w.state.get("accounts", n) or {}).get("balance_minor", 0),
                (w.state.get("accounts", n) or {}).get("energy_wh", 0)) for n in names}


@settings(max_examples=40, deadline=None)
@given(markets())
def test_admitted_books_always_clear_and_settle_conserving_money_and_energy(market):
    orders, readings, params = market
    w = World(params=params, n_members=len(HOUSEHOLDS))
    admitted = 0
    for h, side, energy_wh, price in orders:
        admitted += w.apply(order(w, h, side, energy_wh, price)) is None   # side conflicts etc. are refused
    w.next_time(GATE_MS)
    assert w.apply(clearing_tx(w, clear(w))) is None
    assert len(w.state.get("intervals", str(INTERVAL_S))["orders"]) == admitted
    w.next_time(END_MS)
    for h, (import_wh, export_wh) in readings.items():
        assert w.apply(reading(w, h, import_wh, export_wh)) is None
    before = snapshot(w)
    w.next_time(SETTLE_MS)
    assert w.apply(settle_tx(w)) is None
    after = snapshot(w)
    money = {n: after[n][0] - before[n][0] for n in after}
    energy = {n: after[n][1] - before[n][1] for n in after}
    assert sum(money.values()) == 0 and sum(energy.values()) == 0
    interval = w.state.get("intervals", str(INTERVAL_S))
    for h, net_wh in interval["settlement"]["metered_net_wh"].items():
        import_wh, export_wh = readings.get(h, (0, 0))
        assert net_wh == export_wh - import_wh and energy[w.members[h].public_hex] == -net_wh
    sold: dict[str, int] = {}
    for tid in interval["trades"]:
        t = w.state.get("trades", tid)
        assert t["status"] == "settled"
        for oid in (t["bid_id"], t["offer_id"]):
            sold[oid] = sold.get(oid, 0) + t["energy_wh"]
    assert all(wh <= w.state.get("orders", oid)["energy_wh"] for oid, wh in sold.items())   # no kWh sold twice
