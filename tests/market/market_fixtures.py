"""Shared builders and hypothesis strategies for the market tests."""
from hypothesis import strategies as st

from gridhive.market import Community, Feeder, MarketConfig, Mechanism, Member, Order, PriceRule, Side

T0 = 1_717_200_000_000  # 2024-06-01 00:00 UTC, aligned to the hour
FEED_IN, RETAIL = 4, 30


def bid(order_id, member_id, energy_wh, price, ts_ms=T0 - 1000, t0=T0):
    return Order(order_id, member_id, Side.BID, energy_wh, price, ts_ms, t0)


def offer(order_id, member_id, energy_wh, price, ts_ms=T0 - 1000, t0=T0):
    return Order(order_id, member_id, Side.OFFER, energy_wh, price, ts_ms, t0)


def community_of(*member_ids, feeder_id="f1", **limits):
    return Community(tuple(Member(m, feeder_id, **limits) for m in member_ids))


def config(**overrides):
    return MarketConfig(**{"feed_in_minor_per_kwh": FEED_IN, "retail_minor_per_kwh": RETAIL,
                           **overrides})


@st.composite
def configs(draw, mechanisms=tuple(Mechanism)):
    return config(mechanism=draw(st.sampled_from(mechanisms)),
                  price_rule=draw(st.sampled_from(list(PriceRule))),
                  k_permille=draw(st.integers(0, 1000)),
                  fee_same_feeder_minor_per_kwh=draw(st.integers(0, 3)),
                  fee_cross_feeder_minor_per_kwh=draw(st.integers(0, 6)))


# Few price levels, so that ties in price (and in ts_ms) are common.
prices = st.sampled_from([FEED_IN, 10, 15, 20, RETAIL]) | st.integers(FEED_IN, RETAIL)
limit_w = st.none() | st.integers(0, 20_000)


@st.composite
def communities(draw, with_limits=True, max_members=10):
    n_feeders = draw(st.integers(1, 3))
    feeders = tuple(Feeder(f"f{i}", *(draw(limit_w), draw(limit_w)) if with_limits else ())
                    for i in range(n_feeders))
    members = tuple(
        Member(f"m{i}", f"f{draw(st.integers(0, n_feeders - 1))}",
               *((draw(limit_w), draw(limit_w)) if with_limits else ()),
               has_generation=draw(st.booleans()))
        for i in range(draw(st.integers(2, max_members))))
    return Community(members, feeders)


@st.composite
def books(draw, community, max_orders=24):
    """Valid orders: each member on one side; unique ids; ties in price and ts_ms are likely."""
    side_of = {m.member_id: draw(st.sampled_from(list(Side))) for m in community.members}
    orders = []
    for i in range(draw(st.integers(0, max_orders))):
        member_id = draw(st.sampled_from(sorted(side_of)))
        orders.append(Order(f"o{i:03d}", member_id, side_of[member_id],
                            draw(st.integers(1, 3_000)), draw(prices), T0 - draw(st.integers(1, 3)),
                            T0))
    return orders
