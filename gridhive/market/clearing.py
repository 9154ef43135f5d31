"""Clearing one market interval: deterministic, integer-only, O(n log n).

Tie rule everywhere: bids by price descending, offers by price ascending, then earlier `ts_ms`,
then the smaller order id (ids are unique per interval, so the order is total). Energy requests go
first, oldest first (`ts_ms`, then request id). The result depends only on the set of inputs, never
on their order.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from operator import itemgetter
from typing import Iterable, Sequence

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


_by_id = itemgetter(Order._fields.index("order_id"))
_by_ts = itemgetter(Order._fields.index("ts_ms"))
_by_price = itemgetter(Order._fields.index("price_minor_per_kwh"))


def sort_bids(bids: list[Order]) -> None:
    """Merit order of bids, in place: price descending, then ts_ms, then order id.

    Three stable passes, least significant key first (3x faster than one tuple key; Python's
    sort stays stable with reverse=True).
    """
    bids.sort(key=_by_id)
    bids.sort(key=_by_ts)
    bids.sort(key=_by_price, reverse=True)


def sort_offers(offers: list[Order]) -> None:
    """Merit order of offers, in place: price ascending, then ts_ms, then order id."""
    offers.sort(key=_by_id)
    offers.sort(key=_by_ts)
    offers.sort(key=_by_price)


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
    bids, offers = [], []
    for order in orders:
        rules.admit(order)
        (bids if order.side == Side.BID else offers).append(order)
    sort_bids(bids)
    sort_offers(offers)

    trades, offers = _fill_requests(open_requests, offers, config, community)
    auction = _MECHANISMS[config.mechanism]
    auction_trades, price = auction(bids, offers, config, community)
    trades += auction_trades

    curtailed_wh = 0
    for check in (ConnectionLimits(config, community), *network_checks):
        trades, cut_wh = _apply_check(check, trades, interval_start_ms)
        curtailed_wh += cut_wh
    return ClearingResult(interval_start_ms, config.mechanism, price, tuple(trades), curtailed_wh)


def _apply_check(check: NetworkCheck, trades: list[Trade], interval_start_ms: int):
    admitted = check.admit_wh(trades, interval_start_ms)
    if len(admitted) != len(trades):
        raise RuntimeError(f"{type(check).__name__} returned {len(admitted)} volumes "
                           f"for {len(trades)} trades")
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


def _walk(bids: Sequence[Order], offers: Sequence[Order], check_price: bool = True):
    """Pair the sorted sides in order; each pair trades the smaller remaining volume.

    Yields (bid, offer, energy_wh). With `check_price` it stops where the best remaining bid is
    below the best remaining offer: the welfare-maximising quantity of the merit order. A
    generator, so large books do not hold a second list of pairs (garbage-collector load).
    """
    if not bids or not offers:
        return
    i = j = 0
    bid, offer = bids[0], offers[0]
    bid_left, offer_left = bid.energy_wh, offer.energy_wh
    while not check_price or bid.price_minor_per_kwh >= offer.price_minor_per_kwh:
        energy_wh = bid_left if bid_left < offer_left else offer_left
        yield bid, offer, energy_wh
        bid_left -= energy_wh
        offer_left -= energy_wh
        if not bid_left:
            i += 1
            if i == len(bids):
                return
            bid = bids[i]
            bid_left = bid.energy_wh
        if not offer_left:
            j += 1
            if j == len(offers):
                return
            offer = offers[j]
            offer_left = offer.energy_wh


def _pairs_to_trades(pairs, price_of, config: MarketConfig, community: Community) -> list[Trade]:
    members = community.by_id
    same, cross = config.fee_same_feeder_minor_per_kwh, config.fee_cross_feeder_minor_per_kwh
    new_trade = tuple.__new__  # hot loop: Trade's generated __new__ costs a Python call per trade
    order_kind = TradeKind.ORDER
    trades = []
    append = trades.append
    for bid, offer, energy_wh in pairs:
        buyer, seller = bid.member_id, offer.member_id
        fee = same
        if same != cross and members[buyer].feeder_id != members[seller].feeder_id:
            fee = cross
        bid_price, offer_price = bid.price_minor_per_kwh, offer.price_minor_per_kwh
        append(new_trade(Trade, (bid.order_id, offer.order_id, buyer, seller, energy_wh,
                                 price_of(bid_price, offer_price), fee, bid_price, offer_price,
                                 order_kind)))
    return trades


def _uniform(bids, offers, config, community):
    last = None
    for last in _walk(bids, offers):  # first pass: find the marginal pair, keep nothing
        pass
    if last is None:
        return [], None
    last_bid, last_offer, _ = last
    price = marginal_price(last_bid.price_minor_per_kwh, last_offer.price_minor_per_kwh, config)
    return _pairs_to_trades(_walk(bids, offers), lambda b, a: price, config, community), price


def marginal_price(bid_price: int, offer_price: int, config: MarketConfig) -> int:
    """The uniform price from the marginal (last matched) pair; always within [offer, bid]."""
    if config.price_rule == PriceRule.MIDPOINT:
        return div_half_even(bid_price + offer_price, 2)
    k = config.k_permille
    return div_half_even(k * bid_price + (1000 - k) * offer_price, 1000)


def _pay_as_bid(bids, offers, config, community):
    return _pairs_to_trades(_walk(bids, offers), lambda b, a: b, config, community), None


def _pairwise_midpoint(bids, offers, config, community):
    return _pairs_to_trades(_walk(bids, offers), lambda b, a: div_half_even(b + a, 2), config,
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
    pairs = _walk(eligible_bids, eligible_offers, check_price=False)
    return _pairs_to_trades(pairs, lambda b, a: price, config, community), price


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
