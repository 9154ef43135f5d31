"""Clearing one market interval: deterministic, integer-only, O(n log n).

Tie rule everywhere: bids by price descending, offers by price ascending, then earlier `ts_ms`,
then the smaller order id (ids are unique per interval, so the order is total). Energy requests go
first, oldest first (`ts_ms`, then request id). The result depends only on the set of inputs, never
on their order.
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from enum import StrEnum
from itertools import accumulate, compress, repeat
from operator import add, and_, itemgetter, mul, rshift, sub
from typing import Iterable, NamedTuple, Sequence

from .arith import div_half_even
from .model import (BookRules, Community, EnergyRequest, MarketConfig, Mechanism, Order, OrderError,
                    PriceRule, Side, Trade, TradeKind)
from .network import ConnectionLimits, NetworkCheck


class RoundState(StrEnum):
    AUTHORIZE_OFFERS = "authorize_offers"  # orders are checked and admitted
    BIDS_CLOSED = "bids_closed"            # gate closed: no more orders, the book can be cleared


@dataclass(frozen=True)
class ClearingResult:
    interval_start_ms: int
    mechanism: Mechanism
    clearing_price_minor_per_kwh: int | None  # uniform and mean-bid rules only
    trades: tuple[Trade, ...]                 # requests first, then in matching order
    curtailed_wh: int                         # matched but refused by network checks

    @property
    def energy_wh(self) -> int:
        return sum(t.energy_wh for t in self.trades)

    @property
    def welfare_milli_minor(self) -> int:
        return sum(t.welfare_milli_minor for t in self.trades)


_PRICE_FIELD, _TS_FIELD = Order._fields.index("price_minor_per_kwh"), Order._fields.index("ts_ms")
_by_id = itemgetter(Order._fields.index("order_id"))
_member = itemgetter(Order._fields.index("member_id"))
_energy = itemgetter(Order._fields.index("energy_wh"))
_price = itemgetter(_PRICE_FIELD)
_ts = itemgetter(_TS_FIELD)
_trade_energy = itemgetter(Trade._fields.index("energy_wh"))


def _merit_sort(orders: list[Order], price_sign: int) -> None:
    """Sort in place by (price_sign * price, ts_ms, order id).

    Two stable passes: by id, then by one integer packing price and time of entry. Packed
    relative to the book's smallest values, the key usually stays below 2**30, where CPython
    compares ints fastest (100k bids: 47 ms, vs 54 ms for a pass per field and 134 ms for one
    tuple key).
    """
    if len(orders) < 2:
        return
    ts = list(map(_ts, orders))  # before sorting: reading in input order is cache-friendlier
    first_ms, width = min(ts), max(ts) - min(ts) + 1
    prices = list(map(_price, orders))
    base = min(prices) if price_sign > 0 else -max(prices)
    orders.sort(key=_by_id)
    price_at, ts_at = _PRICE_FIELD, _TS_FIELD
    orders.sort(key=lambda o: (price_sign * o[price_at] - base) * width + o[ts_at] - first_ms)


def sort_bids(bids: list[Order]) -> None:
    """Merit order of bids, in place: price descending, then ts_ms, then order id."""
    _merit_sort(bids, -1)


def sort_offers(offers: list[Order]) -> None:
    """Merit order of offers, in place: price ascending, then ts_ms, then order id."""
    _merit_sort(offers, 1)


class DepthLevel(NamedTuple):
    price_minor_per_kwh: int
    bid_wh: int           # bids at exactly this price
    offer_wh: int         # offers at exactly this price
    demand_wh: int        # bids at this price or higher: what buyers take at this price
    supply_wh: int        # offers at this price or lower: what sellers give at this price


def book_depth(orders: Iterable[Order]) -> list[DepthLevel]:
    """Order-book depth per price level, lowest price first."""
    bid_wh: dict[int, int] = {}
    offer_wh: dict[int, int] = {}
    for order in orders:
        side = bid_wh if order.side == Side.BID else offer_wh
        side[order.price_minor_per_kwh] = side.get(order.price_minor_per_kwh, 0) + order.energy_wh
    prices = sorted(bid_wh.keys() | offer_wh.keys())
    demand = list(accumulate(bid_wh.get(p, 0) for p in reversed(prices)))[::-1]
    supply = list(accumulate(offer_wh.get(p, 0) for p in prices))
    return [DepthLevel(p, bid_wh.get(p, 0), offer_wh.get(p, 0), d, s)
            for p, d, s in zip(prices, demand, supply)]


def fifo_key(order: Order):
    return (order.ts_ms, order.order_id)


def clear(orders: Iterable[Order], config: MarketConfig, community: Community,
          interval_start_ms: int, requests: Iterable[tuple[EnergyRequest, int]] = (),
          network_checks: Sequence[NetworkCheck] = ()) -> ClearingResult:
    """Validate and clear one interval's book.

    `requests` pairs each energy request whose window covers this interval with the energy it
    still needs. Raises OrderError (naming the field) on the first bad input: the ledger only
    admits valid orders, so a bad one here means the caller is wrong, not the member.
    """
    rules = BookRules(config, community, interval_start_ms)
    open_requests = []
    for request, remaining_wh in requests:
        rules.admit_request(request)
        if type(remaining_wh) is not int or not 0 <= remaining_wh <= request.energy_wh:
            raise OrderError("remaining_wh", f"must be an integer in 0..{request.energy_wh}",
                             f"request {request.request_id}")
        if remaining_wh:
            open_requests.append((request, remaining_wh))
    bids, offers = rules.admit_book(orders)
    sort_bids(bids)
    sort_offers(offers)

    trades, offers = _fill_requests(open_requests, offers, config, community)
    auction = _MECHANISMS[config.mechanism]
    auction_trades, price = auction(bids, offers, config, community)
    trades += auction_trades

    limits = ConnectionLimits(config, community)
    curtailed_wh = 0
    for check in ([limits] if limits.any_limit else []) + list(network_checks):
        trades, cut_wh = _apply_check(check, trades, interval_start_ms)
        curtailed_wh += cut_wh
    return ClearingResult(interval_start_ms, config.mechanism, price, tuple(trades), curtailed_wh)


def _apply_check(check: NetworkCheck, trades: list[Trade], interval_start_ms: int):
    admitted = check.admit_wh(trades, interval_start_ms)
    if len(admitted) != len(trades):
        raise RuntimeError(f"{type(check).__name__} returned {len(admitted)} volumes "
                           f"for {len(trades)} trades")
    if admitted == list(map(_trade_energy, trades)) and set(map(type, admitted)) <= {int}:
        return trades, 0  # nothing curtailed (== alone would accept 1.0 or True for 1)
    kept, cut_wh = [], 0
    for trade, energy_wh in zip(trades, admitted):
        if type(energy_wh) is not int or not 0 <= energy_wh <= trade.energy_wh:
            raise RuntimeError(f"{type(check).__name__} admitted {energy_wh!r} Wh "
                               f"of a {trade.energy_wh} Wh trade")
        cut_wh += trade.energy_wh - energy_wh
        if energy_wh == trade.energy_wh:
            kept.append(trade)
        elif energy_wh:
            kept.append(trade._replace(energy_wh=energy_wh))
    return kept, cut_wh


def _fill_requests(open_requests, offers: list[Order], config: MarketConfig, community: Community):
    """Prepaid requests take the cheapest offers at or below their spot price, at the spot price.

    Returns the request trades and the offers' leftovers (still in merit order) for the auction.
    """
    if not open_requests:
        return [], offers
    trades = []
    left_wh = [o.energy_wh for o in offers]
    j = 0  # every request walks the same merit order, so one cursor serves them all
    for request, want_wh in sorted(open_requests, key=lambda r: (r[0].ts_ms, r[0].request_id)):
        spot = request.spot_price_minor_per_kwh
        while want_wh and j < len(offers) and offers[j].price_minor_per_kwh <= spot:
            energy_wh = min(want_wh, left_wh[j])
            trades.append(_trade(request.request_id, request.member_id, spot, offers[j],
                                 energy_wh, spot, config, community, TradeKind.REQUEST))
            want_wh -= energy_wh
            left_wh[j] -= energy_wh
            if not left_wh[j]:
                j += 1
    rest = [o if left == o.energy_wh else o._replace(energy_wh=left)
            for o, left in zip(offers, left_wh) if left]
    return trades, rest


def _trade(bid_id: str, buyer_id: str, bid_price: int, offer: Order, energy_wh: int, price: int,
           config: MarketConfig, community: Community, kind: TradeKind) -> Trade:
    members = community.by_id
    fee = config.fee_minor_per_kwh(members[buyer_id].feeder_id,
                                   members[offer.member_id].feeder_id)
    return Trade(bid_id, offer.order_id, buyer_id, offer.member_id, energy_wh, price, fee,
                 bid_price, offer.price_minor_per_kwh, kind)


def _merit_pairs(bids: Sequence[Order], offers: Sequence[Order], check_price: bool = True):
    """The merit-order walk: pair the sorted sides in order, each pair trading the smaller
    remaining volume. Returns columns (bid index, offer index, energy_wh), one row per pair.

    With `check_price` it stops where the best remaining bid is below the best remaining offer:
    the welfare-maximising quantity of the merit order. Computed on cumulative volume with
    C-level builtins instead of a Python step per pair (100k orders a side: 84 ms, vs 152 ms
    for the two generator passes of the uniform auction before).
    """
    if not bids or not offers:
        return [], [], []
    bid_end_wh = list(accumulate(map(_energy, bids)))
    offer_end_wh = list(accumulate(map(_energy, offers)))
    volume_wh = min(bid_end_wh[-1], offer_end_wh[-1])
    if check_price:
        # Bid prices fall and offer prices rise along the volume, so bisect for the first Wh
        # whose bid is below its offer.
        low, high = 0, volume_wh
        while low < high:
            mid = (low + high) // 2
            if (bids[bisect_right(bid_end_wh, mid)].price_minor_per_kwh
                    < offers[bisect_right(offer_end_wh, mid)].price_minor_per_kwh):
                high = mid
            else:
                low = mid + 1
        volume_wh = low
    if not volume_wh:
        return [], [], []
    # Pairs end where either side's cumulative volume does. Tagged 2*v (a bid ends at v) or
    # 2*v + 1 (an offer does), one sort merges the two sorted runs in linear time and keeps whose
    # order ended; a bid and an offer ending together leave an empty pair, dropped below.
    tagged = sorted([*map(mul, bid_end_wh[:bisect_left(bid_end_wh, volume_wh)], repeat(2)),
                     *map(add, map(mul, offer_end_wh[:bisect_left(offer_end_wh, volume_wh)],
                                   repeat(2)), repeat(1)),
                     2 * volume_wh])
    ends = list(map(rshift, tagged, repeat(1)))
    energy_wh = list(map(sub, ends, [0, *ends[:-1]]))
    offer_index = [0, *accumulate(map(and_, tagged[:-1], repeat(1)))]  # offers ended before
    bid_index = list(map(sub, range(len(ends)), offer_index))           # the rest are bids
    if 0 in energy_wh:
        return (list(compress(bid_index, energy_wh)), list(compress(offer_index, energy_wh)),
                list(compress(energy_wh, energy_wh)))
    return bid_index, offer_index, energy_wh


def _pairs_to_trades(bids: Sequence[Order], offers: Sequence[Order], pairs, prices,
                     config: MarketConfig, community: Community) -> list[Trade]:
    """Trades from `_merit_pairs` columns; `prices(bid_prices, offer_prices)` maps their prices.

    Built with map/zip over the index columns. The per-field iterators advance in lockstep
    inside one zip, so each order is read while it is still in the CPU cache. (About as fast as
    a Python loop per trade: the cost is building the tuples, ~1.3 us a trade here.)
    """
    bid_index, offer_index, energy_wh = pairs

    def bid_field(getter):
        return map(getter, map(bids.__getitem__, bid_index))

    def offer_field(getter):
        return map(getter, map(offers.__getitem__, offer_index))

    same, cross = config.fee_same_feeder_minor_per_kwh, config.fee_cross_feeder_minor_per_kwh
    if same == cross:
        fees = repeat(same)
    else:
        feeder = {m.member_id: m.feeder_id for m in community.members}
        fees = map(lambda b, s: same if feeder[b] == feeder[s] else cross,
                   bid_field(_member), offer_field(_member))
    rows = zip(bid_field(_by_id), offer_field(_by_id), bid_field(_member), offer_field(_member),
               energy_wh, prices(bid_field(_price), offer_field(_price)), fees,
               bid_field(_price), offer_field(_price), repeat(TradeKind.ORDER))
    return list(map(tuple.__new__, repeat(Trade), rows))


def _uniform(bids, offers, config, community):
    pairs = _merit_pairs(bids, offers)
    if not pairs[0]:
        return [], None
    last_bid, last_offer = bids[pairs[0][-1]], offers[pairs[1][-1]]
    price = marginal_price(last_bid.price_minor_per_kwh, last_offer.price_minor_per_kwh, config)
    return _pairs_to_trades(bids, offers, pairs, lambda b, a: repeat(price), config,
                            community), price


def marginal_price(bid_price: int, offer_price: int, config: MarketConfig) -> int:
    """The uniform price from the marginal (last matched) pair; always within [offer, bid]."""
    if config.price_rule == PriceRule.MIDPOINT:
        return div_half_even(bid_price + offer_price, 2)
    k = config.k_permille
    return div_half_even(k * bid_price + (1000 - k) * offer_price, 1000)


def _pay_as_bid(bids, offers, config, community):
    return _pairs_to_trades(bids, offers, _merit_pairs(bids, offers), lambda b, a: b, config,
                            community), None


def _midpoints(bid_prices, offer_prices):
    return map(div_half_even, map(add, bid_prices, offer_prices), repeat(2))


def _pairwise_midpoint(bids, offers, config, community):
    return _pairs_to_trades(bids, offers, _merit_pairs(bids, offers), _midpoints, config,
                            community), None


def mean_bid_price(bids: Sequence[Order], config: MarketConfig) -> int | None:
    """The papers' market clearing price: the plain mean of the bids' prices, capped at retail."""
    if not bids:
        return None
    mean = div_half_even(sum(b.price_minor_per_kwh for b in bids), len(bids))
    return min(max(mean, config.feed_in_minor_per_kwh), config.retail_minor_per_kwh)


def _mean_bid(bids, offers, config, community):
    """Bids at or above the mean price, highest first, meet offers at or below it in FIFO order.

    Orders on the wrong side of the price are left out, so nobody trades beyond its limit.
    """
    price = mean_bid_price(bids, config)
    if price is None:
        return [], None
    eligible_bids = [b for b in bids if b.price_minor_per_kwh >= price]
    eligible_offers = sorted((o for o in offers if o.price_minor_per_kwh <= price), key=fifo_key)
    pairs = _merit_pairs(eligible_bids, eligible_offers, check_price=False)
    return _pairs_to_trades(eligible_bids, eligible_offers, pairs, lambda b, a: repeat(price),
                            config, community), price


_MECHANISMS = {
    Mechanism.UNIFORM: _uniform,
    Mechanism.PAY_AS_BID: _pay_as_bid,
    Mechanism.MEAN_BID: _mean_bid,
    Mechanism.PAIRWISE_MIDPOINT: _pairwise_midpoint,
}


class OrderBook:
    """One interval's round: AUTHORIZE_OFFERS admits checked orders, BIDS_CLOSED allows clearing."""

    def __init__(self, config: MarketConfig, community: Community, interval_start_ms: int):
        self.config = config
        self.community = community
        self.interval_start_ms = interval_start_ms
        self.state = RoundState.AUTHORIZE_OFFERS
        self._rules = BookRules(config, community, interval_start_ms)
        self._orders: list[Order] = []

    @property
    def orders(self) -> tuple[Order, ...]:
        return tuple(self._orders)

    def submit(self, order: Order) -> None:
        """Admit an order or raise OrderError with the reason; a rejected order changes nothing."""
        if self.state != RoundState.AUTHORIZE_OFFERS:
            raise OrderError("interval_start_ms", "the round is closed (BIDS_CLOSED)",
                             f"order {order.order_id}")
        self._rules.admit(order)
        self._orders.append(order)

    def close(self) -> None:
        self.state = RoundState.BIDS_CLOSED

    def clear(self, requests: Iterable[tuple[EnergyRequest, int]] = (),
              network_checks: Sequence[NetworkCheck] = ()) -> ClearingResult:
        if self.state != RoundState.BIDS_CLOSED:
            raise RuntimeError("close the round (BIDS_CLOSED) before clearing it")
        return clear(self._orders, self.config, self.community, self.interval_start_ms,
                     requests, network_checks)
