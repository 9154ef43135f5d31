"""Settlement, statements, the cost-reduction metric and energy requests, by hand."""
import pytest

from gridhive.market import (DSO, ESCROW, UTILITY, Community, EnergyRequest, Member, OrderError,
                             SettlementError, TransferKind, clear, community_report, deposit,
                             escrow_milli_minor, money_balances, remaining_wh, settle_interval,
                             settle_request, statements)
from market_fixtures import T0, bid, config, offer

DAY_MS = 86_400_000
CFG = config(fee_same_feeder_minor_per_kwh=2, fee_cross_feeder_minor_per_kwh=5)
HOUSES = Community((Member("c", "f1"), Member("n", "f1"), Member("p", "f1", has_generation=True)))


def one_interval(t0=T0):
    # c bids 1000 Wh at 20, p offers 1500 Wh at 10: 1000 Wh at 15 (+2 fee) in the uniform auction.
    result = clear([bid("C", "c", 1000, 20, t0=t0, ts_ms=t0 - 1),
                    offer("P", "p", 1500, 10, t0=t0, ts_ms=t0 - 1)], CFG, HOUSES, t0)
    # Meters (export-positive): p exported 1200, c imported 1300, n imported 500.
    return settle_interval(result, {"p": 1200, "c": -1300, "n": -500}, CFG, HOUSES)


def test_transfers_of_one_interval():
    s = one_interval()
    got = [(t.kind, t.energy_from, t.energy_to, t.energy_wh, t.payer, t.payee,
            t.amount_milli_minor) for t in s.transfers]
    assert got == [
        (TransferKind.P2P, "p", "c", 1000, "c", "p", 15_000),
        (TransferKind.GRID_FEE, "", "", 0, "c", DSO, 2_000),
        (TransferKind.SHORTFALL, UTILITY, "c", 300, "c", UTILITY, 9_000),    # 300 Wh x 30
        (TransferKind.SHORTFALL, UTILITY, "n", 500, "n", UTILITY, 15_000),   # 500 Wh x 30
        (TransferKind.SURPLUS, "p", UTILITY, 200, UTILITY, "p", 800),        # 200 Wh x 4
    ]
    balances = money_balances(s.transfers)
    assert balances == {"c": -26_000, "p": 15_800, DSO: 2_000, UTILITY: 23_200, "n": -15_000}
    assert sum(balances.values()) == 0


def test_settlement_refuses_partial_data():
    result = clear([bid("C", "c", 1000, 20), offer("P", "p", 1500, 10)], CFG, HOUSES, T0)
    with pytest.raises(SettlementError, match="missing for c") as err:
        settle_interval(result, {"p": 1000}, CFG, HOUSES)
    assert err.value.field == "metered_net_wh"
    with pytest.raises(SettlementError, match="unknown member"):
        settle_interval(result, {"p": 1000, "c": -1000, "zz": 0}, CFG, HOUSES)
    with pytest.raises(SettlementError, match="integer"):
        settle_interval(result, {"p": 1000, "c": -1000.0}, CFG, HOUSES)


def test_statements_and_cost_reduction():
    days = [one_interval(T0), one_interval(T0 + DAY_MS)]
    daily = statements(days, "day")
    assert [(s.period, s.member_id) for s in daily] == [
        ("2024-06-01", "c"), ("2024-06-01", "n"), ("2024-06-01", "p"),
        ("2024-06-02", "c"), ("2024-06-02", "n"), ("2024-06-02", "p")]
    c = daily[0]
    # With the market: 15,000 energy + 2,000 fee + 9,000 shortfall; without: 1300 Wh x 30.
    assert (c.cost_milli_minor, c.reference_cost_milli_minor, c.reduction_bp) == (
        26_000, 39_000, 3333)
    p = daily[2]
    # Income 15,800 instead of 4,800 (1200 Wh x 4): (-4,800 + 15,800) / 4,800 = 229.17 %.
    assert (p.cost_milli_minor, p.reference_cost_milli_minor, p.reduction_bp) == (
        -15_800, -4_800, 22917)
    assert daily[1].reduction_bp == 0

    monthly = statements(days, "month")
    assert [(s.period, s.member_id, s.cost_milli_minor) for s in monthly] == [
        ("2024-06", "c", 52_000), ("2024-06", "n", 30_000), ("2024-06", "p", -31_600)]

    report = community_report(daily, HOUSES, "2024-06-01")
    assert (report.prosumers.households, report.prosumers.reduction_bp) == (1, 22917)
    # Consumers together: (54,000 - 41,000) / 54,000 = 24.07 %; per house 0 % .. 33.33 %.
    assert (report.consumers.households, report.consumers.reduction_bp,
            report.consumers.min_reduction_bp, report.consumers.max_reduction_bp) == (
        2, 2407, 0, 3333)
    totals = report.totals
    assert (totals.bought_wh, totals.sold_wh, totals.grid_import_wh, totals.grid_export_wh) == (
        1000, 1000, 800, 200)
    # P2P money cancels inside the community: what leaves is fees + imports - exports.
    assert totals.cost_milli_minor == 2_000 + 24_000 - 800


def test_reduction_undefined_without_reference():
    s = settle_interval(clear([], CFG, HOUSES, T0), {"c": 0}, CFG, HOUSES)
    assert statements([s], "day")[0].reduction_bp is None


REQ = EnergyRequest("R1", "c", 3000, T0, T0 + 2 * 900_000, 12, T0 - 60_000)
TOWN = Community((Member("c", "f1"), Member("b", "f1"), Member("p1", "f1"), Member("p2", "f1"),
                  Member("p3", "f2")))


def test_energy_request_filled_over_two_intervals_then_refunded():
    t1 = T0 + 900_000
    assert escrow_milli_minor(REQ, CFG) == 3000 * (12 + 5)  # spot + the highest grid fee
    # Interval 1: the request takes P1 (8 <= 12) at 12 before the auction; P2 (14) is above
    # the spot price and goes to the auction, where B buys 500 Wh at (20 + 14) / 2 = 17.
    first = clear([offer("P1", "p1", 1000, 8), offer("P2", "p2", 1000, 14), bid("B", "b", 500, 20)],
                  CFG, TOWN, T0, requests=[(REQ, 3000)])
    assert [(t.kind, t.bid_id, t.offer_id, t.energy_wh, t.price_minor_per_kwh, t.fee_minor_per_kwh)
            for t in first.trades] == [("request", "R1", "P1", 1000, 12, 2),
                                       ("order", "B", "P2", 500, 17, 2)]
    assert remaining_wh(REQ, [first]) == 2000
    # Interval 2: P3 sits on another feeder (fee 5); the request takes 2000 of its 2500 Wh.
    second = clear([offer("P3", "p3", 2500, 10, t0=t1)], CFG, TOWN, t1,
                   requests=[(REQ, remaining_wh(REQ, [first]))])
    assert [(t.energy_wh, t.fee_minor_per_kwh) for t in second.trades] == [(2000, 5)]

    closing = settle_request(REQ, CFG, [first, second])
    assert (closing.filled_wh, closing.spent_milli_minor) == (3000, 1000 * 14 + 2000 * 17)
    assert closing.refund.amount_milli_minor == 51_000 - 48_000

    # Escrow pays the fills; after deposit, both settlements and the refund it holds nothing.
    legs = [deposit(REQ, CFG, TOWN)]
    legs += settle_interval(first, {"c": -1000, "b": -500, "p1": 1000, "p2": 500}, CFG,
                            TOWN).transfers
    legs += settle_interval(second, {"c": -2000, "p3": 2000}, CFG, TOWN).transfers
    legs.append(closing.refund)
    balances = money_balances(legs)
    assert balances[ESCROW] == 0 and sum(balances.values()) == 0
    assert balances["c"] == -48_000


def test_unfilled_request_is_refunded_in_full():
    result = clear([offer("P2", "p2", 1000, 14)], CFG, TOWN, T0, requests=[(REQ, 3000)])
    assert result.trades == ()
    closing = settle_request(REQ, CFG, [result])
    assert closing.refund.amount_milli_minor == escrow_milli_minor(REQ, CFG)


@pytest.mark.parametrize("request_,remaining,field", [
    (REQ._replace(window_start_ms=T0 + 1), 3000, "window_start_ms"),
    (REQ._replace(window_end_ms=T0), 3000, "window_end_ms"),
    (REQ._replace(spot_price_minor_per_kwh=31), 3000, "spot_price_minor_per_kwh"),
    (REQ._replace(ts_ms=T0 + 1), 3000, "ts_ms"),
    (REQ._replace(energy_wh=0), 0, "energy_wh"),
    (REQ._replace(window_start_ms=T0 + 900_000, window_end_ms=T0 + 1_800_000), 3000,
     "window_start_ms"),
    (REQ, 3001, "remaining_wh"),
])
def test_bad_requests_are_rejected(request_, remaining, field):
    with pytest.raises(OrderError) as err:
        clear([], CFG, TOWN, T0, requests=[(request_, remaining)])
    assert err.value.field == field


def test_requester_cannot_also_sell():
    with pytest.raises(OrderError, match="other side"):
        clear([offer("X", "c", 100, 5)], CFG, TOWN, T0, requests=[(REQ, 3000)])
