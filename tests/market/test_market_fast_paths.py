"""The column-wise fast paths agree with their plain, order-by-order definitions."""
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridhive.market import (ClearingResult, ConnectionLimits, EnergyRequest, Mechanism, Order,
                             OrderError, Side, Trade, TradeKind, canonical_bytes, clear,
                             div_half_even, marginal_price, mean_bid_price, sort_bids, sort_offers)
from gridhive.market.clearing import _merit_pairs, _merit_side
from gridhive.market.model import BookRules
from market_fixtures import FEED_IN, RETAIL, T0, books, communities, config, configs

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

bad_values = st.sampled_from([0, -1, 1.5, True, None, "x", "", "\n", ["unhashable"], 10**40])


@st.composite
def maybe_bad_books(draw):
    """Mostly valid orders from m0..m3, with a bad value or a duplicate id now and then."""
    def pick(good):
        return draw(bad_values) if draw(st.integers(0, 12)) == 0 else good
    orders = []
    for i in range(draw(st.integers(0, 10))):
        member = f"m{draw(st.integers(0, 3))}"
        orders.append(Order(pick(f"o{draw(st.integers(0, 12))}"), pick(member),
                            pick(Side.BID if member in ("m0", "m1") else Side.OFFER),
                            pick(draw(st.integers(1, 100))), pick(draw(st.integers(FEED_IN, RETAIL))),
                            pick(T0 - draw(st.integers(1, 5))), pick(T0)))
    return orders


def outcome(admit):
    try:
        admit()
    except OrderError as err:
        return err.field, err.subject
    return None


@SETTINGS
@given(communities(with_limits=False, max_members=5), configs(), maybe_bad_books(),
       st.sampled_from([None, "m0", "m2"]))
def test_book_admission_agrees_with_order_by_order_admission(community, config, orders, prior):
    one_by_one, whole = BookRules(config, community, T0), BookRules(config, community, T0)
    if prior in community.by_id:  # a member already on the bid side (an energy request)
        for rules in (one_by_one, whole):
            rules._claim("req", "request_id", prior, Side.BID, "request req")

    def each():
        for order in orders:
            one_by_one.admit(order)

    expected = outcome(each)
    assert outcome(lambda: whole.admit_book(orders)) == expected
    if expected is None:
        assert whole._ids == one_by_one._ids
        assert whole._members_on == one_by_one._members_on


def reference_walk(bids, offers, check_price=True):
    """The merit-order walk, one Python step per pair."""
    pairs, i, j = [], 0, 0
    bid_left = bids[0].energy_wh if bids else 0
    offer_left = offers[0].energy_wh if offers else 0
    while i < len(bids) and j < len(offers):
        if check_price and bids[i].price_minor_per_kwh < offers[j].price_minor_per_kwh:
            break
        energy_wh = min(bid_left, offer_left)
        pairs.append((i, j, energy_wh))
        bid_left -= energy_wh
        offer_left -= energy_wh
        if not bid_left:
            i += 1
            bid_left = bids[i].energy_wh if i < len(bids) else 0
        if not offer_left:
            j += 1
            offer_left = offers[j].energy_wh if j < len(offers) else 0
    return pairs


def merit_order(orders):
    """Bids and offers sorted by the tie rule's tuple key."""
    bids = sorted((o for o in orders if o.side == Side.BID),
                  key=lambda o: (-o.price_minor_per_kwh, o.ts_ms, o.order_id))
    offers = sorted((o for o in orders if o.side == Side.OFFER),
                    key=lambda o: (o.price_minor_per_kwh, o.ts_ms, o.order_id))
    return bids, offers


@SETTINGS
@given(communities(with_limits=False), st.data(), st.booleans())
def test_vectorised_walk_equals_the_step_by_step_walk(community, data, check_price):
    orders = data.draw(books(community, max_orders=40))
    book = BookRules(config(), community, T0).admit_book(orders)
    bid_side, offer_side = _merit_side(book, book.is_bid, -1), _merit_side(book, ~book.is_bid, 1)
    bid_pos, offer_pos, energy_wh = _merit_pairs(bid_side, offer_side, check_price)
    pairs = zip([book.order_id[r] for r in bid_side.rows[bid_pos]],
                [book.order_id[r] for r in offer_side.rows[offer_pos]], energy_wh.tolist())
    bids, offers = merit_order(orders)
    assert list(pairs) == [(bids[i].order_id, offers[j].order_id, e)
                           for i, j, e in reference_walk(bids, offers, check_price)]


@SETTINGS
@given(communities(with_limits=False), st.data())
def test_merit_sort_equals_the_tuple_key_sort(community, data):
    orders = data.draw(books(community, max_orders=40))
    # Spread times of entry widely too, so the packed key leaves the small-int range.
    orders = [o._replace(ts_ms=data.draw(st.integers(0, T0))) for o in orders]
    bids = [o for o in orders if o.side == Side.BID]
    offers = [o for o in orders if o.side == Side.OFFER]
    expected_bids = sorted(bids, key=lambda o: (-o.price_minor_per_kwh, o.ts_ms, o.order_id))
    expected_offers = sorted(offers, key=lambda o: (o.price_minor_per_kwh, o.ts_ms, o.order_id))
    sort_bids(bids)
    sort_offers(offers)
    assert (bids, offers) == (expected_bids, expected_offers)


def reference_clear(orders, config, community, t0, requests=()):
    """Clearing as the docs define it, one Python step at a time, without validation."""
    bids, offers = merit_order(orders)
    left = {o.order_id: o.energy_wh for o in orders}

    def trade(bid_id, buyer_id, bid_price, offer, energy_wh, price, kind=TradeKind.ORDER):
        fee = config.fee_minor_per_kwh(community.by_id[buyer_id].feeder_id,
                                       community.by_id[offer.member_id].feeder_id)
        return Trade(bid_id, offer.order_id, buyer_id, offer.member_id, energy_wh, price, fee,
                     bid_price, offer.price_minor_per_kwh, kind)

    trades = []
    for request, want_wh in sorted(requests, key=lambda r: (r[0].ts_ms, r[0].request_id)):
        spot = request.spot_price_minor_per_kwh
        for o in offers:
            energy_wh = min(want_wh, left[o.order_id])
            if o.price_minor_per_kwh > spot or not want_wh:
                break
            if energy_wh:
                trades.append(trade(request.request_id, request.member_id, spot, o, energy_wh,
                                    spot, TradeKind.REQUEST))
                want_wh -= energy_wh
                left[o.order_id] -= energy_wh
    offers = [o._replace(energy_wh=left[o.order_id]) for o in offers if left[o.order_id]]
    check_price, price = True, None
    if config.mechanism == Mechanism.MEAN_BID:
        price = mean_bid_price(bids, config)
        bids = [b for b in bids if b.price_minor_per_kwh >= price] if bids else []
        offers = sorted((o for o in offers if bids and o.price_minor_per_kwh <= price),
                        key=lambda o: (o.ts_ms, o.order_id))
        check_price = False
    pairs = [(bids[i], offers[j], e) for i, j, e in reference_walk(bids, offers, check_price)]
    if config.mechanism == Mechanism.UNIFORM and pairs:
        price = marginal_price(pairs[-1][0].price_minor_per_kwh,
                               pairs[-1][1].price_minor_per_kwh, config)
    for b, o, energy_wh in pairs:
        b_price, o_price = b.price_minor_per_kwh, o.price_minor_per_kwh
        trades.append(trade(b.order_id, b.member_id, b_price, o, energy_wh, {
            Mechanism.PAY_AS_BID: b_price,
            Mechanism.PAIRWISE_MIDPOINT: div_half_even(b_price + o_price, 2)}.get(
                config.mechanism, price)))
    admitted = ConnectionLimits(config, community).admit_wh(trades, t0)
    kept = tuple(t._replace(energy_wh=a) for t, a in zip(trades, admitted) if a)
    return ClearingResult(t0, config.mechanism, price, kept,
                          sum(t.energy_wh for t in trades) - sum(admitted))


@st.composite
def scaled_markets(draw):
    """Random books with requests, some with values past 64 bits (energy, prices, times)."""
    energy_scale, price_base, t0 = draw(st.sampled_from([
        (1, 0, T0), (10**15, 0, T0), (10**17, 10**19, 900_000 * 10**14)]))
    community = draw(communities())
    cfg = draw(configs())
    cfg = config(**{**cfg.__dict__, "feed_in_minor_per_kwh": price_base + FEED_IN,
                    "retail_minor_per_kwh": price_base + RETAIL})
    orders = [o._replace(energy_wh=o.energy_wh * energy_scale,
                         price_minor_per_kwh=price_base + o.price_minor_per_kwh,
                         ts_ms=t0 - T0 + o.ts_ms, interval_start_ms=t0)
              for o in draw(books(community))]
    sellers = {o.member_id for o in orders if o.side == Side.OFFER}
    buyers = sorted(set(community.by_id) - sellers)
    requests = []
    for i in range(draw(st.integers(0, 2)) if buyers else 0):
        energy_wh = draw(st.integers(1, 3_000)) * energy_scale
        request = EnergyRequest(f"r{i}", draw(st.sampled_from(buyers)), energy_wh, t0,
                                t0 + cfg.interval_ms,
                                price_base + draw(st.integers(FEED_IN, RETAIL)),
                                t0 - draw(st.integers(1, 3)))
        requests.append((request, draw(st.integers(0, energy_wh))))
    return cfg, community, orders, t0, requests


@SETTINGS
@given(scaled_markets())
def test_clearing_equals_the_step_by_step_reference(market):
    cfg, community, orders, t0, requests = market
    expected = reference_clear(orders, cfg, community, t0, [r for r in requests if r[1]])
    assert canonical_bytes(clear(orders, cfg, community, t0, requests)) == canonical_bytes(
        expected)
