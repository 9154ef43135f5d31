"""The column-wise fast paths agree with their plain, order-by-order definitions."""
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridhive.market import Order, OrderError, Side, sort_bids, sort_offers
from gridhive.market.clearing import _merit_pairs
from gridhive.market.model import BookRules
from market_fixtures import FEED_IN, RETAIL, T0, books, communities, configs

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


@SETTINGS
@given(communities(with_limits=False), st.data(), st.booleans())
def test_vectorised_walk_equals_the_step_by_step_walk(community, data, check_price):
    orders = data.draw(books(community, max_orders=40))
    bids = [o for o in orders if o.side == Side.BID]
    offers = [o for o in orders if o.side == Side.OFFER]
    sort_bids(bids)
    sort_offers(offers)
    assert list(zip(*_merit_pairs(bids, offers, check_price))) == reference_walk(
        bids, offers, check_price)


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
