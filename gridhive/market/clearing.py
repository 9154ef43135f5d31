"""Clearing one market interval: deterministic, integer-only, O(n log n).

Tie rule everywhere: bids by price descending, offers by price ascending, then earlier `ts_ms`,
then the smaller order id (ids are unique per interval, so the order is total). Energy requests go
first, oldest first (`ts_ms`, then request id). The result depends only on the set of inputs, never
on their order.

The book is cleared as columns: admission turns the orders into numpy arrays once (exact
integers: int64, or Python ints where a value would not fit), sorting and the merit-order walk
run on those arrays, and only the trades become Python objects again.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from itertools import accumulate, repeat
from operator import add, itemgetter
from typing import Iterable, NamedTuple, Sequence

import numpy as np

from .arith import INT64_MAX, div_half_even, exact_cumsum, int_array
from .model import (BookColumns, BookRules, Community, EnergyRequest, MarketConfig, Mechanism,
                    Order, OrderError, PriceRule, Side, Trade, TradeKind)
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


_trade_energy = itemgetter(Trade._fields.index("energy_wh"))


class _Side(NamedTuple):
    """One side of an admitted book in matching order, as numpy columns."""

    rows: np.ndarray                 # each order's row in the BookColumns
    energy_wh: np.ndarray            # still to match
    price_minor_per_kwh: np.ndarray

    def take(self, positions) -> _Side:
        return _Side(*(column[positions] for column in self))


def _ordered(keys: Sequence[np.ndarray], order_ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Positions sorting by `keys` (the last is the primary, as in `np.lexsort`), ties broken
    by the smaller order id (`order_ids[rows[i]]`): a total order, as ids are unique.

    numpy sorts the integers (any algorithm: ties are settled after); the (usually few) runs
    of equal keys are then sorted by id.
    """
    positions = np.argsort(keys[0]) if len(keys) == 1 else np.lexsort(keys)
    tied = np.ones(max(len(positions) - 1, 0), bool)  # tied[i]: position i + 1 ties with i
    for key in keys:
        ordered_key = key[positions]
        tied &= ordered_key[1:] == ordered_key[:-1]
    tied = np.flatnonzero(tied)
    if tied.size:
        breaks = np.flatnonzero(np.diff(tied) != 1)
        starts = tied[np.r_[0, breaks + 1]].tolist()
        stops = (tied[np.r_[breaks, tied.size - 1]] + 2).tolist()
        for start, stop in zip(starts, stops):
            run = positions[start:stop]
            ids = order_ids[rows[run]].tolist()
            positions[start:stop] = run[sorted(range(len(run)), key=ids.__getitem__)]
    return positions


def _merit_positions(prices: np.ndarray, ts_ms: np.ndarray, price_sign: int,
                     order_ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Positions in merit order: by price_sign * price, then ts_ms, then order id.

    Price and time of entry are packed into one int64 relative to the side's smallest values
    where that fits (one sort instead of two), else sorted as two keys.
    """
    signed = prices if price_sign > 0 else -prices
    if not len(signed):
        return np.zeros(0, np.intp)
    base, first = signed.min(), ts_ms.min()
    width = int(ts_ms.max()) - int(first) + 1
    if (int(signed.max()) - int(base) + 1) * width > INT64_MAX:
        return _ordered((ts_ms, signed), order_ids, rows)
    return _ordered(((signed - base) * width + (ts_ms - first),), order_ids, rows)


def _merit_side(book: BookColumns, selected: np.ndarray, price_sign: int) -> _Side:
    rows = np.flatnonzero(selected)
    side = _Side(rows, book.energy_wh[rows], book.price_minor_per_kwh[rows])
    return side.take(_merit_positions(side.price_minor_per_kwh, book.ts_ms[rows], price_sign,
                                      book.order_id, rows))


def _merit_sort(orders: list[Order], price_sign: int) -> None:
    rows = np.arange(len(orders))
    positions = _merit_positions(int_array([o.price_minor_per_kwh for o in orders]),
                                 int_array([o.ts_ms for o in orders]), price_sign,
                                 np.array([o.order_id for o in orders], dtype=object), rows)
    orders[:] = [orders[i] for i in positions.tolist()]


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


def clear(orders: Iterable[Order], config: MarketConfig, community: Community,
          interval_start_ms: int, requests: Iterable[tuple[EnergyRequest, int]] = (),
          network_checks: Sequence[NetworkCheck] = ()) -> ClearingResult:
    """Validate and clear one interval's book.

    `requests` pairs each energy request whose window covers this interval with the energy it
    still needs. Raises OrderError (naming the field) on the first bad input: the ledger only
    admits valid orders, so a bad one here means the caller is wrong, not the member.
    """
    book, open_requests = _admit(orders, requests, config, community, interval_start_ms)
    bids, offers = _merit_side(book, book.is_bid, -1), _merit_side(book, ~book.is_bid, 1)

    trades, offers = _fill_requests(open_requests, book, offers, config, community)
    auction = _MECHANISMS[config.mechanism]
    auction_trades, price = auction(book, bids, offers, config, community)
    trades += auction_trades

    limits = ConnectionLimits(config, community)
    curtailed_wh = 0
    for check in ([limits] if limits.any_limit else []) + list(network_checks):
        trades, cut_wh = _apply_check(check, trades, interval_start_ms)
        curtailed_wh += cut_wh
    return ClearingResult(interval_start_ms, config.mechanism, price, tuple(trades), curtailed_wh)


def _admit(orders, requests, config, community, interval_start_ms):
    """The admitted book and the requests still open. (Its own function, so that the rules'
    id and member sets are freed before matching, and not traversed by every garbage
    collection that building the trades triggers.)"""
    rules = BookRules(config, community, interval_start_ms)
    open_requests = []
    for request, remaining_wh in requests:
        rules.admit_request(request)
        if type(remaining_wh) is not int or not 0 <= remaining_wh <= request.energy_wh:
            raise OrderError("remaining_wh", f"must be an integer in 0..{request.energy_wh}",
                             f"request {request.request_id}")
        if remaining_wh:
            open_requests.append((request, remaining_wh))
    return rules.admit_book(orders), open_requests


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


def _fill_requests(open_requests, book: BookColumns, offers: _Side, config: MarketConfig,
                   community: Community):
    """Prepaid requests take the cheapest offers at or below their spot price, at the spot price.

    Returns the request trades and the offers' leftovers (still in merit order) for the auction.
    """
    if not open_requests:
        return [], offers
    trades = []
    offer_wh, offer_prices = offers.energy_wh.tolist(), offers.price_minor_per_kwh.tolist()
    j = 0  # every request walks the same merit order, so one cursor serves them all
    for request, want_wh in sorted(open_requests, key=lambda r: (r[0].ts_ms, r[0].request_id)):
        spot = request.spot_price_minor_per_kwh
        while want_wh and j < len(offer_prices) and offer_prices[j] <= spot:
            energy_wh = min(want_wh, offer_wh[j])
            row = int(offers.rows[j])
            seller_id = book.member_id[row]
            fee = config.fee_minor_per_kwh(community.by_id[request.member_id].feeder_id,
                                           community.by_id[seller_id].feeder_id)
            trades.append(Trade(request.request_id, book.order_id[row], request.member_id,
                                seller_id, energy_wh, spot, fee, spot, offer_prices[j],
                                TradeKind.REQUEST))
            want_wh -= energy_wh
            offer_wh[j] -= energy_wh
            if not offer_wh[j]:
                j += 1
    rest = offers.take(slice(j, None))
    if j < len(offer_wh):  # the first offer left may be partly taken
        rest = rest._replace(energy_wh=rest.energy_wh.copy())
        rest.energy_wh[0] = offer_wh[j]
    return trades, rest


def _merit_pairs(bids: _Side, offers: _Side, check_price: bool = True):
    """The merit-order walk: pair the sorted sides in order, each pair trading the smaller
    remaining volume. Returns arrays (bid position, offer position, energy_wh), one row per pair.

    With `check_price` it stops where the best remaining bid is below the best remaining offer:
    the welfare-maximising quantity of the merit order. Computed on cumulative volume instead
    of a Python step per pair: pairs end where either side's cumulative volume does, and each
    pair's orders are found by binary search.
    """
    if not len(bids.rows) or not len(offers.rows):
        return np.zeros(0, np.intp), np.zeros(0, np.intp), np.zeros(0, np.int64)
    bid_end_wh, offer_end_wh = exact_cumsum(bids.energy_wh), exact_cumsum(offers.energy_wh)
    volume_wh = min(bid_end_wh[-1], offer_end_wh[-1])
    ends = np.concatenate((bid_end_wh, offer_end_wh))
    # A stable argsort of two sorted runs is a linear merge; a bid's end sorts before an
    # offer's equal end. The pair ending at e holds the Wh e - 1, so its bid is the one after
    # all bids ending before e: the count of bid ends merged before it (likewise offers).
    merged = np.argsort(ends, kind="stable")
    ends, from_bid = ends[merged], merged < len(bid_end_wh)
    ended_bids = np.cumsum(from_bid) - from_bid
    keep = np.r_[True, ends[1:] != ends[:-1]] & (ends <= volume_wh)  # one pair per distinct end
    ends, bid_pos = ends[keep], ended_bids[keep]
    offer_pos = np.flatnonzero(keep) - bid_pos
    if check_price:
        # Bid prices fall and offer prices rise along the volume: stop at the first crossing.
        crossed = np.flatnonzero(bids.price_minor_per_kwh[bid_pos]
                                 < offers.price_minor_per_kwh[offer_pos])
        if crossed.size:
            ends, bid_pos, offer_pos = (a[:crossed[0]] for a in (ends, bid_pos, offer_pos))
    return bid_pos, offer_pos, np.diff(ends, prepend=0)


def _pairs_to_trades(book: BookColumns, bids: _Side, offers: _Side, pairs, prices,
                     config: MarketConfig, community: Community) -> list[Trade]:
    """Trades from `_merit_pairs`; `prices(bid_prices, offer_prices)` maps the pairs' limit
    prices (lists) to trade prices.

    The columns are gathered by numpy (or list indexing for the strings) and zipped into the
    Trade tuples in one C loop.
    """
    bid_pos, offer_pos, energy_wh = pairs
    bid_rows, offer_rows = bids.rows[bid_pos], offers.rows[offer_pos]
    buyers, sellers = book.member_id[bid_rows].tolist(), book.member_id[offer_rows].tolist()
    bid_prices = bids.price_minor_per_kwh[bid_pos].tolist()
    offer_prices = offers.price_minor_per_kwh[offer_pos].tolist()
    same, cross = config.fee_same_feeder_minor_per_kwh, config.fee_cross_feeder_minor_per_kwh
    if same == cross:
        fees = repeat(same)
    else:
        feeder = {m.member_id: m.feeder_id for m in community.members}
        fees = map(lambda b, s: same if feeder[b] == feeder[s] else cross, buyers, sellers)
    rows = zip(book.order_id[bid_rows].tolist(), book.order_id[offer_rows].tolist(), buyers,
               sellers, energy_wh.tolist(), prices(bid_prices, offer_prices), fees, bid_prices,
               offer_prices, repeat(TradeKind.ORDER))
    return list(map(tuple.__new__, repeat(Trade), rows))


def _uniform(book, bids, offers, config, community):
    pairs = _merit_pairs(bids, offers)
    if not len(pairs[0]):
        return [], None
    price = marginal_price(int(bids.price_minor_per_kwh[pairs[0][-1]]),
                           int(offers.price_minor_per_kwh[pairs[1][-1]]), config)
    return _pairs_to_trades(book, bids, offers, pairs, lambda b, a: repeat(price), config,
                            community), price


def marginal_price(bid_price: int, offer_price: int, config: MarketConfig) -> int:
    """The uniform price from the marginal (last matched) pair; always within [offer, bid]."""
    if config.price_rule == PriceRule.MIDPOINT:
        return div_half_even(bid_price + offer_price, 2)
    k = config.k_permille
    return div_half_even(k * bid_price + (1000 - k) * offer_price, 1000)


def _pay_as_bid(book, bids, offers, config, community):
    return _pairs_to_trades(book, bids, offers, _merit_pairs(bids, offers), lambda b, a: b,
                            config, community), None


def _midpoints(bid_prices, offer_prices):
    return map(div_half_even, map(add, bid_prices, offer_prices), repeat(2))


def _pairwise_midpoint(book, bids, offers, config, community):
    return _pairs_to_trades(book, bids, offers, _merit_pairs(bids, offers), _midpoints, config,
                            community), None


def mean_bid_price(bids: Sequence[Order], config: MarketConfig) -> int | None:
    """The papers' market clearing price: the plain mean of the bids' prices, capped at retail."""
    return _mean_price([b.price_minor_per_kwh for b in bids], config)


def _mean_price(prices: list[int], config: MarketConfig) -> int | None:
    if not prices:
        return None
    mean = div_half_even(sum(prices), len(prices))
    return min(max(mean, config.feed_in_minor_per_kwh), config.retail_minor_per_kwh)


def _mean_bid(book, bids, offers, config, community):
    """Bids at or above the mean price, highest first, meet offers at or below it in FIFO order
    (`ts_ms`, then order id).

    Orders on the wrong side of the price are left out, so nobody trades beyond its limit.
    """
    price = _mean_price(bids.price_minor_per_kwh.tolist(), config)
    if price is None:
        return [], None
    eligible_bids = bids.take(bids.price_minor_per_kwh >= price)
    eligible_offers = offers.take(offers.price_minor_per_kwh <= price)
    eligible_offers = eligible_offers.take(_ordered(
        (book.ts_ms[eligible_offers.rows],), book.order_id, eligible_offers.rows))
    pairs = _merit_pairs(eligible_bids, eligible_offers, check_price=False)
    return _pairs_to_trades(book, eligible_bids, eligible_offers, pairs,
                            lambda b, a: repeat(price), config, community), price


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
