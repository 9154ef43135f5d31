"""Properties on random books: conservation, limits, optimality, determinism, balanced settlement."""
import dataclasses
import random
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridhive.market import (ESCROW, EnergyRequest, MarketConfig, Mechanism, Order, OrderError,
                             Side, TradeKind, canonical_bytes, clear, deposit, money_balances,
                             settle_interval, settle_request, statements, validate_order)
from gridhive.market.bench import (INTERVAL_START_MS, lp_welfare_milli_minor, random_book,
                                   volume_greedy_welfare_milli_minor)
from gridhive.market.model import BookRules
from market_fixtures import FEED_IN, RETAIL, T0, books, communities, configs

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def markets(draw, with_limits=True, mechanisms=tuple(Mechanism)):
    community = draw(communities(with_limits=with_limits))
    return draw(configs(mechanisms)), community, draw(books(community))


@SETTINGS
@given(markets())
def test_energy_money_and_prices_stay_within_bounds(market):
    config, community, orders = market
    result = clear(orders, config, community, T0)
    by_id = {o.order_id: o for o in orders}
    filled = Counter()
    for t in result.trades:
        b, o = by_id[t.bid_id], by_id[t.offer_id]
        assert (b.side, o.side) == (Side.BID, Side.OFFER)
        assert (t.buyer_id, t.seller_id) == (b.member_id, o.member_id)
        assert t.energy_wh > 0
        assert (t.bid_price_minor_per_kwh, t.offer_price_minor_per_kwh) == (
            b.price_minor_per_kwh, o.price_minor_per_kwh)
        assert FEED_IN <= o.price_minor_per_kwh <= t.price_minor_per_kwh \
            <= b.price_minor_per_kwh <= RETAIL
        filled[t.bid_id] += t.energy_wh
        filled[t.offer_id] += t.energy_wh
    assert all(filled[i] <= by_id[i].energy_wh for i in filled)
    bought = sum(t.energy_wh for t in result.trades)
    assert bought == sum(filled[o.order_id] for o in orders if o.side == Side.OFFER)
    paid = sum(t.buyer_pays_milli_minor for t in result.trades)
    assert paid == sum(t.seller_receives_milli_minor + t.fee_milli_minor for t in result.trades)
    if config.mechanism in (Mechanism.UNIFORM, Mechanism.MEAN_BID):
        assert {t.price_minor_per_kwh for t in result.trades} <= {
            result.clearing_price_minor_per_kwh}
    if config.mechanism == Mechanism.PAY_AS_BID:
        assert all(t.price_minor_per_kwh == t.bid_price_minor_per_kwh for t in result.trades)


@SETTINGS
@given(markets(), st.randoms(use_true_random=False))
def test_shuffled_input_gives_byte_identical_output(market, rng):
    config, community, orders = market
    shuffled = orders[:]
    rng.shuffle(shuffled)
    expected = canonical_bytes(clear(orders, config, community, T0))
    # Reversal swaps every pair of tied orders; the shuffle mixes the rest.
    for permuted in (shuffled, orders[::-1]):
        assert canonical_bytes(clear(permuted, config, community, T0)) == expected


@SETTINGS
@given(markets())
def test_network_limits_are_never_exceeded(market):
    config, community, orders = market
    result = clear(orders, config, community, T0)
    member_in, member_out, feeder_in, feeder_out = Counter(), Counter(), Counter(), Counter()
    for t in result.trades:
        member_in[t.buyer_id] += t.energy_wh
        member_out[t.seller_id] += t.energy_wh
        buyer_feeder = community.by_id[t.buyer_id].feeder_id
        seller_feeder = community.by_id[t.seller_id].feeder_id
        if buyer_feeder != seller_feeder:
            feeder_in[buyer_feeder] += t.energy_wh
            feeder_out[seller_feeder] += t.energy_wh
    for owners, flows_in, flows_out in ((community.by_id, member_in, member_out),
                                        (community.feeder_by_id, feeder_in, feeder_out)):
        for key, owner in owners.items():
            for limit_w, flow_wh in ((owner.max_import_w, flows_in[key]),
                                     (owner.max_export_w, flows_out[key])):
                if limit_w is not None:
                    assert flow_wh * 3_600_000 <= limit_w * config.interval_ms


@settings(max_examples=100, deadline=None)
@given(markets(with_limits=False, mechanisms=(Mechanism.UNIFORM,)))
def test_uniform_welfare_is_the_lp_optimum_and_beats_volume_greedy(market):
    config, community, orders = market
    result = clear(orders, config, community, T0)
    lp = lp_welfare_milli_minor(orders) if orders else 0.0
    assert abs(result.welfare_milli_minor - lp) <= 1e-6 * max(1.0, abs(lp))
    assert result.welfare_milli_minor >= volume_greedy_welfare_milli_minor(orders)
    assert result.curtailed_wh == 0


@SETTINGS
@given(markets(with_limits=False, mechanisms=(Mechanism.PAY_AS_BID, Mechanism.PAIRWISE_MIDPOINT)))
def test_merit_order_mechanisms_share_the_uniform_allocation(market):
    config, community, orders = market
    uniform = clear(orders, dataclasses.replace(config, mechanism=Mechanism.UNIFORM), community,
                    T0)
    other = clear(orders, config, community, T0)
    assert [t[:5] for t in other.trades] == [t[:5] for t in uniform.trades]


@st.composite
def settled(draw):
    config, community, orders = draw(markets())
    result = clear(orders, config, community, T0)
    traders = {t.buyer_id for t in result.trades} | {t.seller_id for t in result.trades}
    others = [m for m in community.by_id if m not in traders]
    metered = {m: draw(st.integers(-5_000, 5_000)) for m in sorted(traders)}
    metered.update({m: draw(st.integers(-5_000, 5_000))
                    for m in others if draw(st.booleans())})
    return config, community, result, metered


@SETTINGS
@given(settled())
def test_settlement_transfers_balance(case):
    config, community, result, metered = case
    s = settle_interval(result, metered, config, community)
    assert sum(money_balances(s.transfers).values()) == 0
    received = Counter()
    for t in s.transfers:
        assert t.energy_wh >= 0 and t.amount_milli_minor >= 0
        received[t.energy_to] += t.energy_wh
        received[t.energy_from] -= t.energy_wh
    assert all(received[m] == -net for m, net in metered.items())
    for statement in statements([s], "day"):
        # A member's cost is exactly what it paid out net in the transfers.
        assert statement.cost_milli_minor == -money_balances(s.transfers).get(
            statement.member_id, 0)


bad_values = st.one_of(st.integers(-10, 40), st.sampled_from([0, 1.5, True, None, "x", ""]))


@st.composite
def maybe_bad_orders(draw):
    def pick(good):
        return draw(bad_values) if draw(st.integers(0, 6)) == 0 else good
    return Order(pick(f"o{draw(st.integers(0, 5))}"), pick(draw(st.sampled_from(["m0", "m1"]))),
                 pick(draw(st.sampled_from(list(Side)))), pick(draw(st.integers(1, 100))),
                 pick(draw(st.integers(FEED_IN, RETAIL))), pick(T0 - 1), pick(T0))


@SETTINGS
@given(communities(with_limits=False), configs(), st.lists(maybe_bad_orders(), max_size=8))
def test_fast_admission_agrees_with_field_by_field_validation(community, config, orders):
    rules = BookRules(config, community, T0)
    ids, side_of = set(), {}
    for order in orders:
        try:
            validate_order(order, config, community, T0)
            expected = None
            if order.order_id in ids:
                expected = "order_id"
            elif side_of.get(order.member_id, order.side) != order.side:
                expected = "side"
        except OrderError as err:
            expected = err.field
        try:
            rules.admit(order)
            got = None
        except OrderError as err:
            got = err.field
        assert got == expected
        if got is None:
            ids.add(order.order_id)
            side_of[order.member_id] = order.side


@pytest.mark.parametrize("mechanism", list(Mechanism))
def test_bigger_books_clear_deterministically(mechanism):
    orders, community = random_book(300, 300, seed=3)
    cfg = MarketConfig(FEED_IN, RETAIL, mechanism=mechanism)
    first = canonical_bytes(clear(orders, cfg, community, INTERVAL_START_MS))
    shuffled = orders[:]
    random.Random(5).shuffle(shuffled)
    assert canonical_bytes(clear(shuffled, cfg, community, INTERVAL_START_MS)) == first


def test_volume_greedy_baseline_loses_welfare():
    orders, community = random_book(50, 50, seed=11)
    welfare = clear(orders, MarketConfig(FEED_IN, RETAIL), community,
                    INTERVAL_START_MS).welfare_milli_minor
    assert volume_greedy_welfare_milli_minor(orders) < welfare / 2


def test_benchmark_reports_the_named_figures():
    from gridhive.market import bench
    figures = bench.run(repeats=1)
    for key in ("uniform_100k_s", "uniform_2k_s", "welfare_2k", "lp_welfare_2k",
                "uniform_1k_orders_s", "mean_bid_10k_orders_s", "volume_greedy_welfare_2k"):
        assert key in figures
    assert figures["welfare_2k"] == pytest.approx(figures["lp_welfare_2k"], abs=1)
    assert figures["volume_greedy_welfare_2k"] < figures["welfare_2k"]


@SETTINGS
@given(markets(), st.integers(1, 5_000), st.integers(FEED_IN, RETAIL), st.data())
def test_energy_requests_stay_within_spot_and_escrow(market, energy_wh, spot, data):
    config, community, orders = market
    sellers = {o.member_id for o in orders if o.side == Side.OFFER}
    buyers = sorted(set(community.by_id) - sellers)
    if not buyers:
        return
    request = EnergyRequest("req", data.draw(st.sampled_from(buyers)), energy_wh, T0,
                            T0 + config.interval_ms, spot, T0 - 10)
    remaining = data.draw(st.integers(0, energy_wh))
    result = clear(orders, config, community, T0, requests=[(request, remaining)])
    fills = [t for t in result.trades if t.kind == TradeKind.REQUEST]
    assert sum(t.energy_wh for t in fills) <= remaining
    assert all(t.price_minor_per_kwh == spot >= t.offer_price_minor_per_kwh for t in fills)
    closing = settle_request(request, config, [result])
    assert closing.refund.amount_milli_minor >= 0
    traders = {t.buyer_id for t in result.trades} | {t.seller_id for t in result.trades}
    s = settle_interval(result, dict.fromkeys(traders, 0), config, community)
    balances = money_balances([deposit(request, config, community), *s.transfers,
                               closing.refund])
    assert balances.get(ESCROW, 0) == 0 and sum(balances.values()) == 0
