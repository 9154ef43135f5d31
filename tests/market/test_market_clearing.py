"""Hand-computed clearing results for every mechanism, tie rules, validation and the round."""
import random

import pytest

from gridhive.market import (ClearingResult, ConfigError, Mechanism, Order, OrderBook, OrderError,
                             PriceRule, RoundState, Side, canonical_bytes, clear, div_half_even,
                             from_plain, to_plain)
from market_fixtures import T0, bid, community_of, config, offer

# Three buyers, three sellers (prices in minor units per kWh, energy in Wh).
#   bids:   A 30 x 1000, B 20 x 1000, C 10 x 1000
#   offers: X  5 x 1500 (entered last), Y 15 x 1000 (entered first), Z 25 x 1000
# Merit order: A-X 1000, B-X 500, B-Y 500, then C (10) < Y (15) stops. Marginal pair B 20 / Y 15.
BOOK = [
    bid("A", "a", 1000, 30), bid("B", "b", 1000, 20), bid("C", "c", 1000, 10),
    offer("X", "x", 1500, 5, ts_ms=T0 - 10), offer("Y", "y", 1000, 15, ts_ms=T0 - 900),
    offer("Z", "z", 1000, 25),
]
MEMBERS = community_of("a", "b", "c", "x", "y", "z")


def legs(result: ClearingResult):
    return [(t.bid_id, t.offer_id, t.energy_wh, t.price_minor_per_kwh) for t in result.trades]


def test_half_even_rounding():
    assert [div_half_even(n, 2) for n in (35, 33, 25, -5, 4)] == [18, 16, 12, -2, 2]
    assert div_half_even(1625, 100) == 16


def test_uniform_midpoint_of_marginal_pair():
    result = clear(BOOK, config(), MEMBERS, T0)
    # (20 + 15) / 2 = 17.5, half-even -> 18
    assert result.clearing_price_minor_per_kwh == 18
    assert legs(result) == [("A", "X", 1000, 18), ("B", "X", 500, 18), ("B", "Y", 500, 18)]
    assert result.welfare_milli_minor == 1000 * 25 + 500 * 15 + 500 * 5
    assert result.energy_wh == 2000


@pytest.mark.parametrize("k_permille,price", [(250, 16), (0, 15), (1000, 20), (500, 18)])
def test_uniform_k_double_auction(k_permille, price):
    # p = k * 20 + (1 - k) * 15; k = 0.25 -> 16.25 -> 16
    cfg = config(price_rule=PriceRule.K_DOUBLE, k_permille=k_permille)
    result = clear(BOOK, cfg, MEMBERS, T0)
    assert result.clearing_price_minor_per_kwh == price
    assert {t.price_minor_per_kwh for t in result.trades} == {price}


def test_pay_as_bid_merit_order():
    result = clear(BOOK, config(mechanism=Mechanism.PAY_AS_BID), MEMBERS, T0)
    assert legs(result) == [("A", "X", 1000, 30), ("B", "X", 500, 20), ("B", "Y", 500, 20)]
    assert result.clearing_price_minor_per_kwh is None


def test_pairwise_midpoint_each_pair_at_its_own_midpoint():
    result = clear(BOOK, config(mechanism=Mechanism.PAIRWISE_MIDPOINT), MEMBERS, T0)
    # (30+5)/2 = 17.5 -> 18, (20+5)/2 = 12.5 -> 12, (20+15)/2 = 17.5 -> 18
    assert legs(result) == [("A", "X", 1000, 18), ("B", "X", 500, 12), ("B", "Y", 500, 18)]


def test_papers_hourly_rule_mean_of_bids_fifo_highest_bid_first():
    # Mean of bids (30 + 20 + 10) / 3 = 20. Bids >= 20: A, B (highest first). Offers <= 20 in
    # FIFO order of entry: Y (entered first), then X. Z (25) and C (10) are left out.
    result = clear(BOOK, config(mechanism=Mechanism.MEAN_BID, interval_ms=3_600_000), MEMBERS, T0)
    assert result.clearing_price_minor_per_kwh == 20
    assert legs(result) == [("A", "Y", 1000, 20), ("B", "X", 1000, 20)]


def test_papers_hourly_rule_four_houses():
    # One hour, two PV prosumers sell, two consumers buy (cents/kWh; feed-in 4, retail 30).
    # Bids 28 and 24 -> MCP 26. Offers FIFO: p1 (6 c, 2 kWh, first), p2 (9 c, 3 kWh).
    # c1 (28, 2.5 kWh) takes p1's 2 kWh and 0.5 kWh of p2; c2 (24) is below the MCP.
    cfg = config(mechanism=Mechanism.MEAN_BID, interval_ms=3_600_000)
    houses = community_of("p1", "p2", "c1", "c2")
    book = [offer("p1o", "p1", 2000, 6, ts_ms=T0 - 3000), offer("p2o", "p2", 3000, 9),
            bid("c1b", "c1", 2500, 28), bid("c2b", "c2", 1500, 24)]
    result = clear(book, cfg, houses, T0)
    assert result.clearing_price_minor_per_kwh == 26
    assert legs(result) == [("c1b", "p1o", 2000, 26), ("c1b", "p2o", 500, 26)]
    # c1 pays 2.5 kWh x 26 c = 65 c = 65,000 milli-minor; p1 gets 52 c, p2 13 c.
    assert sum(t.buyer_pays_milli_minor for t in result.trades) == 65_000


def test_papers_hourly_rule_caps_at_retail_and_rounds_half_even():
    cfg = config(mechanism=Mechanism.MEAN_BID)
    houses = community_of("p", "c1", "c2")
    book = [offer("o", "p", 1000, 4), bid("b1", "c1", 500, 10), bid("b2", "c2", 500, 11)]
    assert clear(book, cfg, houses, T0).clearing_price_minor_per_kwh == 10  # 10.5 -> 10
    book = [offer("o", "p", 1000, 4), bid("b1", "c1", 500, 30), bid("b2", "c2", 500, 30)]
    result = clear(book, cfg, houses, T0)
    assert result.clearing_price_minor_per_kwh == 30 and result.energy_wh == 1000


def test_quartierstrom_pairs_with_grid_fee():
    # Quartierstrom-like: feed-in 4 Rp, utility 21 Rp (20.75 rounded to whole Rp), fee 6 Rp/kWh
    # on every P2P kWh, added to the buyer's price.
    # Bids H1 21 x 1500, H2 12 x 1000, H3 6 x 500; offers PV1 4 x 2000, PV2 8 x 1000.
    # H1-PV1 1500 @ 12.5 -> 12; H2-PV1 500 @ 8; H2-PV2 500 @ 10; H3 (6) < PV2 (8) stops.
    cfg = config(feed_in_minor_per_kwh=4, retail_minor_per_kwh=21,
                 mechanism=Mechanism.PAIRWISE_MIDPOINT, fee_same_feeder_minor_per_kwh=6,
                 fee_cross_feeder_minor_per_kwh=6)
    houses = community_of("h1", "h2", "h3", "pv1", "pv2")
    book = [bid("H1", "h1", 1500, 21), bid("H2", "h2", 1000, 12), bid("H3", "h3", 500, 6),
            offer("PV1", "pv1", 2000, 4), offer("PV2", "pv2", 1000, 8)]
    result = clear(book, cfg, houses, T0)
    assert legs(result) == [("H1", "PV1", 1500, 12), ("H2", "PV1", 500, 8),
                            ("H2", "PV2", 500, 10)]
    h1 = result.trades[0]
    assert (h1.seller_receives_milli_minor, h1.fee_milli_minor, h1.buyer_pays_milli_minor) == (
        18_000, 9_000, 27_000)  # 18 Rp to PV1, 9 Rp to the DSO, H1 pays 27 Rp
    paid = sum(t.buyer_pays_milli_minor for t in result.trades)
    received = sum(t.seller_receives_milli_minor for t in result.trades)
    fees = sum(t.fee_milli_minor for t in result.trades)
    assert paid == received + fees == 27_000 + 500 * 14 + 500 * 16


def test_grid_fee_depends_on_network_level():
    from gridhive.market import Community, Member
    houses = Community((Member("b1", "f1"), Member("s1", "f1"), Member("s2", "f2")))
    cfg = config(fee_same_feeder_minor_per_kwh=2, fee_cross_feeder_minor_per_kwh=5)
    book = [bid("B", "b1", 2000, 30), offer("S1", "s1", 1000, 5), offer("S2", "s2", 1000, 6)]
    assert [t.fee_minor_per_kwh for t in clear(book, cfg, houses, T0).trades] == [2, 5]


def test_ties_price_then_time_then_id():
    # Two offers at 10 compete for a 1000 Wh bid: the earlier one wins; at equal time, the
    # smaller id wins. Bids likewise.
    houses = community_of("b", "s1", "s2", "s3")
    book = [bid("B", "b", 1000, 20), offer("S2", "s2", 1000, 10, ts_ms=T0 - 5),
            offer("S1", "s1", 1000, 10, ts_ms=T0 - 5), offer("S3", "s3", 1000, 10, ts_ms=T0 - 9)]
    assert legs(clear(book, config(), houses, T0)) == [("B", "S3", 1000, 15)]
    book[-1] = offer("S3", "s3", 1000, 10, ts_ms=T0 - 5)
    assert legs(clear(book, config(), houses, T0)) == [("B", "S1", 1000, 15)]
    houses = community_of("b1", "b2", "s")
    book = [bid("B2", "b2", 1000, 20), bid("B1", "b1", 1000, 20), offer("S", "s", 1000, 10)]
    assert legs(clear(book, config(), houses, T0)) == [("B1", "S", 1000, 15)]


def test_shuffled_input_gives_identical_bytes():
    reference = canonical_bytes(clear(BOOK, config(), MEMBERS, T0))
    rng = random.Random(7)
    for _ in range(20):
        shuffled = BOOK[:]
        rng.shuffle(shuffled)
        assert canonical_bytes(clear(shuffled, config(), MEMBERS, T0)) == reference


def test_empty_and_uncrossed_books():
    assert clear([], config(), MEMBERS, T0).trades == ()
    result = clear([bid("C", "c", 1000, 10), offer("Z", "z", 1000, 25)], config(), MEMBERS, T0)
    assert result.trades == () and result.clearing_price_minor_per_kwh is None


@pytest.mark.parametrize("order,field", [
    (bid("A", "a", 0, 20), "energy_wh"),
    (bid("A", "a", -5, 20), "energy_wh"),
    (bid("A", "a", 1.5, 20), "energy_wh"),
    (bid("A", "a", True, 20), "energy_wh"),
    (bid("A", "a", 100, 3), "price_minor_per_kwh"),
    (bid("A", "a", 100, 31), "price_minor_per_kwh"),
    (bid("A", "a", 100, 20.0), "price_minor_per_kwh"),
    (bid("A", "a", 100, 20, t0=T0 + 900_000), "interval_start_ms"),
    (bid("A", "a", 100, 20, ts_ms=T0 + 1), "ts_ms"),
    (bid("A", "nobody", 100, 20), "member_id"),
    (bid("", "a", 100, 20), "order_id"),
    (Order("A", "a", "buy", 100, 20, T0 - 1, T0), "side"),
])
def test_bad_orders_are_rejected_naming_the_field(order, field):
    with pytest.raises(OrderError) as err:
        clear([order], config(), MEMBERS, T0)
    assert err.value.field == field


def test_gate_closure_lead_time():
    cfg = config(gate_closure_lead_ms=300_000)
    with pytest.raises(OrderError, match="gate closure") as err:
        clear([bid("A", "a", 100, 20, ts_ms=T0 - 299_999)], cfg, MEMBERS, T0)
    assert err.value.field == "ts_ms"
    assert clear([bid("A", "a", 100, 20, ts_ms=T0 - 300_000)], cfg, MEMBERS, T0).trades == ()


def test_duplicate_id_and_both_sides_are_rejected():
    with pytest.raises(OrderError, match="duplicate") as err:
        clear([bid("A", "a", 100, 20), bid("A", "b", 100, 20)], config(), MEMBERS, T0)
    assert err.value.field == "order_id"
    with pytest.raises(OrderError, match="other side") as err:
        clear([bid("A", "a", 100, 20), offer("A2", "a", 100, 10)], config(), MEMBERS, T0)
    assert err.value.field == "side"


def test_misaligned_interval_is_rejected():
    with pytest.raises(OrderError) as err:
        clear([], config(), MEMBERS, T0 + 1)
    assert err.value.field == "interval_start_ms"


def test_round_states():
    book = OrderBook(config(), MEMBERS, T0)
    assert book.state == RoundState.AUTHORIZE_OFFERS
    book.submit(bid("A", "a", 1000, 30))
    with pytest.raises(OrderError):
        book.submit(offer("A2", "a", 100, 5))  # rejected: a already bids
    book.submit(offer("X", "x", 1000, 5))
    with pytest.raises(RuntimeError):
        book.clear()
    book.close()
    assert book.state == RoundState.BIDS_CLOSED
    with pytest.raises(OrderError, match="closed"):
        book.submit(offer("Y", "y", 100, 5))
    assert legs(book.clear()) == [("A", "X", 1000, 18)]
    assert [o.order_id for o in book.orders] == ["A", "X"]


@pytest.mark.parametrize("overrides,key", [
    ({"retail_minor_per_kwh": 3}, "retail_minor_per_kwh"),
    ({"interval_ms": 420_000 + 1}, "interval_ms"),
    ({"k_permille": 1001}, "k_permille"),
    ({"mechanism": "sealed"}, "mechanism"),
    ({"fee_cross_feeder_minor_per_kwh": -1}, "fee_cross_feeder_minor_per_kwh"),
    ({"feed_in_minor_per_kwh": 4.0}, "feed_in_minor_per_kwh"),
])
def test_bad_config_names_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        config(**overrides)
    assert err.value.field == key


def test_config_accepts_mechanism_names():
    assert config(mechanism="pay_as_bid").mechanism is Mechanism.PAY_AS_BID


def test_codec_round_trip_and_strictness():
    order = BOOK[0]
    plain = to_plain(order)
    assert plain == {"order_id": "A", "member_id": "a", "side": "bid", "energy_wh": 1000,
                     "price_minor_per_kwh": 30, "ts_ms": T0 - 1000, "interval_start_ms": T0}
    assert from_plain(Order, plain) == order
    assert from_plain(Order, plain).side is Side.BID
    with pytest.raises(Exception) as err:
        from_plain(Order, {**plain, "energy_wh": 1000.0})
    assert err.value.field == "energy_wh"
    with pytest.raises(TypeError):
        canonical_bytes({"x": 0.5})
    assert canonical_bytes({"b": 1, "a": [MEMBERS.members[0]]}) == (
        b'{"a":[{"feeder_id":"f1","has_generation":0,"max_export_w":null,"max_import_w":null,'
        b'"member_id":"a"}],"b":1}')
    from gridhive.market import Community
    assert from_plain(Community, to_plain(MEMBERS)) == MEMBERS
