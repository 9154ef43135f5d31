"""The market contract (gridhive.market.contract): the ledger's records mapped onto the market core,
its results as ledger JSON, and the one money conversion (docs/LEDGER.md §3.4)."""
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridhive.ledger.codec import encode
from gridhive.ledger.state import DEFAULT_PARAMS
from gridhive.market import (DSO, UTILITY, ClearingResult, Feeder, MarketConfig, Mechanism, Member, Order,
                             PriceRule, Side, clear, from_plain, money_balances, settle_interval, to_plain)
from gridhive.market.contract import DEFAULT_FEEDER, MarketContract, market_config, minor_units

START_S = 1_717_200_000                   # 2024-06-01 00:00 UTC
PARAMS = {**DEFAULT_PARAMS, "fee_same_feeder_minor_per_kwh": 13, "fee_cross_feeder_minor_per_kwh": 37}
MEMBERS = {"h0": {"key": "aa" * 32, "gateway": "bb" * 32, "role": "prosumer", "feeder": "f1", "max_export_w": 2_000},
           "h1": {"key": "cc" * 32, "gateway": "bb" * 32, "role": "consumer", "max_import_w": 0},
           "h2": {"key": "dd" * 32, "gateway": "bb" * 32, "role": "prosumer"}}
CONTRACT = MarketContract().for_chain(PARAMS, {"f1": {"max_import_w": 9_000}})


def record(oid, household, side, energy_wh, price, ts_ms=START_S * 1000 - 400_000):
    return {"id": oid, "household": household, "interval_start_s": START_S, "side": side, "energy_wh": energy_wh,
            "price_minor_per_kwh": price, "ts_ms": ts_ms}


def test_the_genesis_params_become_the_market_config():
    config = market_config({**DEFAULT_PARAMS, "mechanism": "pay_as_bid", "price_rule": "k_double",
                            "k_permille": 700, "interval_s": 600, "gate_closure_s": 120})
    assert config == MarketConfig(400, 2075, Mechanism.PAY_AS_BID, PriceRule.K_DOUBLE, 700, 0, 0, 600_000, 120_000)
    with pytest.raises(ValueError, match="params: interval_s: must divide one hour"):
        market_config({**DEFAULT_PARAMS, "interval_s": 700})
    with pytest.raises(ValueError, match="params: gate_closure_s"):
        market_config({**DEFAULT_PARAMS, "gate_closure_s": -1})
    with pytest.raises(ValueError, match="feeders"):
        MarketContract().for_chain(DEFAULT_PARAMS, {"f1": {"max_import_w": -5}})


def test_admitted_members_become_the_community():
    community = CONTRACT.community(MEMBERS)
    assert community.by_id["h0"] == Member("h0", "f1", None, 2_000, True)
    assert community.by_id["h1"] == Member("h1", DEFAULT_FEEDER, 0, None, False)
    assert community.feeder_by_id["f1"] == Feeder("f1", 9_000, None)
    assert CONTRACT.community(dict(reversed(list(MEMBERS.items())))) == community    # order-free


def test_order_records_become_market_orders():
    (order,) = CONTRACT.orders(START_S, [record("ab" * 32, "h1", "buy", 700, 1500, ts_ms=5)])
    assert order == Order("ab" * 32, "h1", Side.BID, 700, 1500, 5, START_S * 1000)
    assert CONTRACT.orders(START_S, [record("x", "h0", "sell", 1, 400)])[0].side == Side.OFFER


def test_clearing_is_the_market_cores_with_the_members_limits_and_fees():
    orders = [record("o1", "h0", "sell", 1_000, 500), record("o2", "h2", "sell", 300, 450),
              record("o3", "h1", "buy", 800, 1500)]
    result = CONTRACT.clear({h: MEMBERS[h] for h in ("h0", "h1", "h2")}, START_S, orders)
    expected = clear(CONTRACT.orders(START_S, orders), CONTRACT.config, CONTRACT.community(MEMBERS), START_S * 1000)
    assert result == to_plain(expected)
    # h1 may import nothing (a 0 W connection limit): every matched Wh is curtailed
    assert result["trades"] == [] and result["curtailed_wh"] == 800
    encode(result)                                           # ledger JSON: ints, strings, null; no floats


def test_minor_units_round_half_to_even():
    assert [minor_units(m) for m in (0, 499, 500, 501, 1_500, 2_500, 2_501, 622_500)] == [0, 0, 0, 1, 2, 2, 3, 622]


@st.composite
def ledger_books(draw):
    """Members and their orders as the ledger admits them: one side per household per interval,
    up to 4 orders each; random tx ids; several orders per block (equal ts_ms)."""
    n = draw(st.integers(2, 8))
    members = {}
    for i in range(n):
        m = {"key": f"{i:064x}", "gateway": "bb" * 32, "role": draw(st.sampled_from(["prosumer", "consumer"]))}
        if draw(st.booleans()):
            m["feeder"] = draw(st.sampled_from(["f1", "f2"]))
        if draw(st.integers(0, 3)) == 0:
            m["max_import_w"] = draw(st.integers(0, 8_000))
        members[f"h{i}"] = m
    orders = []
    for h, m in members.items():
        side = draw(st.sampled_from(["buy", "sell"] if m["role"] == "prosumer" else ["buy"]))
        for _ in range(draw(st.integers(0, 4))):
            orders.append(record(f"{draw(st.integers(0, 2**64)):064x}", h, side, draw(st.integers(1, 4_000)),
                                 draw(st.sampled_from([400, 900, 1500, 2075]) | st.integers(400, 2075)),
                                 ts_ms=START_S * 1000 - 400_000 - draw(st.integers(0, 3)) * 1000))
    if len({o["id"] for o in orders}) != len(orders):
        orders = orders[:0]
    readings = {h: {"import_wh": draw(st.integers(0, 6_000)), "export_wh": draw(st.integers(0, 6_000))}
                for h in members if draw(st.booleans())}
    params = {**PARAMS, "mechanism": draw(st.sampled_from([m.value for m in Mechanism])),
              "price_rule": draw(st.sampled_from([r.value for r in PriceRule])),
              "k_permille": draw(st.integers(0, 1000))}
    return params, members, orders, readings


@settings(max_examples=120, deadline=None)
@given(ledger_books(), st.randoms())
def test_clear_and_settle_are_deterministic_integer_and_conserve_money_and_energy(book, rng):
    params, members, orders, readings = book
    contract = MarketContract().for_chain(params, {"f2": {"max_export_w": 3_000}})
    involved = {o["household"] for o in orders}
    result = contract.clear({h: members[h] for h in involved}, START_S, orders)
    shuffled = list(orders)
    rng.shuffle(shuffled)
    again = contract.clear({h: members[h] for h in sorted(involved, reverse=True)}, START_S, shuffled)
    assert encode(again) == encode(result)                   # depends on the book, never on its order
    traders = {t["buyer_id"] for t in result["trades"]} | {t["seller_id"] for t in result["trades"]}
    metered = {h: readings.get(h, {"import_wh": 0, "export_wh": 0}) for h in set(readings) | traders}
    settled = contract.settle({h: members[h] for h in metered}, START_S, result, metered)
    encode(settled)
    transfers = settled["transfers"]
    for t in transfers:
        assert t["amount_minor"] == minor_units(t["amount_milli_minor"])
        assert abs(t["amount_minor"] * 1000 - t["amount_milli_minor"]) <= 500
    # money: the same minor units leave the payer and reach the payee, so every balance change sums to zero
    money: dict[str, int] = {}
    energy: dict[str, int] = {}
    for t in transfers:
        money[t["payer"]] = money.get(t["payer"], 0) - t["amount_minor"]
        money[t["payee"]] = money.get(t["payee"], 0) + t["amount_minor"]
        if t["energy_wh"]:
            energy[t["energy_from"]] = energy.get(t["energy_from"], 0) - t["energy_wh"]
            energy[t["energy_to"]] = energy.get(t["energy_to"], 0) + t["energy_wh"]
    assert sum(money.values()) == 0 and sum(energy.values()) == 0
    for h, r in metered.items():                            # each household settles exactly its meter
        assert energy.get(h, 0) == r["import_wh"] - r["export_wh"]
    assert set(money) <= set(metered) | {UTILITY, DSO}
    # the exact amounts are the market core's own settlement
    core = settle_interval(from_plain(ClearingResult, result),
                           {h: r["export_wh"] - r["import_wh"] for h, r in metered.items()}, contract.config,
                           contract.community({h: members[h] for h in metered}))
    assert [t["amount_milli_minor"] for t in transfers] == [t.amount_milli_minor for t in core.transfers]
    assert sum(money_balances(core.transfers).values()) == 0


def test_a_book_shuffled_by_hand_clears_to_the_same_bytes():
    orders = [record(f"{i:064x}", f"h{i % 3}", "sell" if i % 3 == 0 else "buy", 100 + i, 400 + 37 * i)
              for i in range(12)]
    members = {h: {**MEMBERS[h], "role": "prosumer"} for h in MEMBERS}
    first = encode(CONTRACT.clear(members, START_S, orders))
    for seed in range(5):
        random.Random(seed).shuffle(orders)
        assert encode(CONTRACT.clear(members, START_S, orders)) == first
