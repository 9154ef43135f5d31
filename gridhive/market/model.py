"""Market data: orders, community topology, rules, and their validation.

Units: energy in Wh, prices in minor currency units per kWh, times in ms since the Unix epoch
(UTC), power limits in W. Money is `energy_wh * price_minor_per_kwh`, which is exactly an amount
in milli-minor units (1/1000 of a cent), so no money is ever rounded (see docs/MARKET.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from itertools import chain, compress, repeat
from operator import eq, not_
from typing import Iterable, NamedTuple

import numpy as np

from .arith import int_array

HOUR_MS = 3_600_000
# Accounts that are not members: the utility backstops deviations, the DSO collects grid fees,
# escrow holds prepaid energy requests.
UTILITY = "utility"
DSO = "dso"
ESCROW = "escrow"
RESERVED_ACCOUNTS = frozenset({UTILITY, DSO, ESCROW})
MAX_ID_LEN = 128


class MarketError(ValueError):
    """A rejected input; `field` names the offending field or config key."""

    def __init__(self, field_name: str, reason: str, subject: str = ""):
        self.field = field_name
        self.reason = reason
        self.subject = subject
        where = f"{subject}: " if subject else ""
        super().__init__(f"{where}{field_name}: {reason}")


class OrderError(MarketError):
    """An order or energy request was rejected."""


class ConfigError(MarketError):
    """A market config or community topology is invalid."""


class Side(StrEnum):
    BID = "bid"      # wants to buy
    OFFER = "offer"  # wants to sell


class Mechanism(StrEnum):
    UNIFORM = "uniform"                      # pay-as-clear double auction
    PAY_AS_BID = "pay_as_bid"                # discriminatory, merit-order matching
    MEAN_BID = "mean_bid"                    # the papers' hourly rule
    PAIRWISE_MIDPOINT = "pairwise_midpoint"  # Quartierstrom


class PriceRule(StrEnum):
    MIDPOINT = "midpoint"  # (bid + ask) / 2 of the marginal pair
    K_DOUBLE = "k_double"  # k * bid + (1 - k) * ask, k in permille


class Order(NamedTuple):
    order_id: str
    member_id: str
    side: Side
    energy_wh: int
    price_minor_per_kwh: int  # bid: most it pays; offer: least it accepts (grid fees excluded)
    ts_ms: int                # time of entry, stamped by whoever admits the order
    interval_start_ms: int    # the market interval the order is for


def _check_int(value, name: str, subject: str, minimum: int | None = None,
               error=ConfigError) -> None:
    if type(value) is not int:
        raise error(name, f"must be an integer, got {type(value).__name__}", subject)
    if minimum is not None and value < minimum:
        raise error(name, f"must be >= {minimum}, got {value}", subject)


def _check_id(value, name: str, subject: str, error=ConfigError) -> None:
    if type(value) is not str or not value or len(value) > MAX_ID_LEN or not value.isprintable():
        raise error(name, f"must be a printable string of 1..{MAX_ID_LEN} characters", subject)


def _check_optional_limit(value, name: str, subject: str) -> None:
    if value is not None:
        _check_int(value, name, subject, minimum=0)


@dataclass(frozen=True)
class MarketConfig:
    """One community's market rules. Every field is checked; errors name the key."""

    feed_in_minor_per_kwh: int  # price floor; surplus is bought by the utility at this price
    retail_minor_per_kwh: int   # price cap; shortfall is sold by the utility at this price
    mechanism: Mechanism = Mechanism.UNIFORM
    price_rule: PriceRule = PriceRule.MIDPOINT  # uniform auction only
    k_permille: int = 500                       # k-double rule only: weight of the bid
    fee_same_feeder_minor_per_kwh: int = 0      # network level: trade inside one LV feeder
    fee_cross_feeder_minor_per_kwh: int = 0     # network level: trade across the substation
    interval_ms: int = 900_000
    gate_closure_lead_ms: int = 0               # orders must be entered this long before start

    def __post_init__(self):
        s = "market config"
        for name in ("feed_in_minor_per_kwh", "retail_minor_per_kwh", "k_permille",
                     "fee_same_feeder_minor_per_kwh", "fee_cross_feeder_minor_per_kwh",
                     "gate_closure_lead_ms"):
            _check_int(getattr(self, name), name, s, minimum=0)
        if self.retail_minor_per_kwh < self.feed_in_minor_per_kwh:
            raise ConfigError("retail_minor_per_kwh", "must be >= feed_in_minor_per_kwh", s)
        if self.k_permille > 1000:
            raise ConfigError("k_permille", "must be within 0..1000", s)
        _check_int(self.interval_ms, "interval_ms", s, minimum=1)
        if HOUR_MS % self.interval_ms:
            raise ConfigError("interval_ms", "must divide one hour (intervals align to the hour)", s)
        for name, enum in (("mechanism", Mechanism), ("price_rule", PriceRule)):
            try:
                object.__setattr__(self, name, enum(getattr(self, name)))
            except ValueError:
                raise ConfigError(name, f"must be one of {[e.value for e in enum]}", s) from None

    @property
    def max_fee_minor_per_kwh(self) -> int:
        return max(self.fee_same_feeder_minor_per_kwh, self.fee_cross_feeder_minor_per_kwh)

    def fee_minor_per_kwh(self, buyer_feeder: str, seller_feeder: str) -> int:
        if buyer_feeder == seller_feeder:
            return self.fee_same_feeder_minor_per_kwh
        return self.fee_cross_feeder_minor_per_kwh

    def interval_start_ms(self, ts_ms: int) -> int:
        return ts_ms - ts_ms % self.interval_ms

    def limit_wh(self, power_w: int | None) -> int | None:
        """A power limit held over one interval, as energy; floored so the limit is never exceeded."""
        return None if power_w is None else power_w * self.interval_ms // HOUR_MS


@dataclass(frozen=True)
class Member:
    member_id: str
    feeder_id: str
    max_import_w: int | None = None  # DSO limit at the connection point; None = unlimited
    max_export_w: int | None = None
    has_generation: bool = False     # prosumer (reported separately in cost reductions)

    def __post_init__(self):
        _check_id(self.member_id, "member_id", "member")
        s = f"member {self.member_id}"
        if self.member_id in RESERVED_ACCOUNTS:
            raise ConfigError("member_id", "is a reserved account name", s)
        _check_id(self.feeder_id, "feeder_id", s)
        _check_optional_limit(self.max_import_w, "max_import_w", s)
        _check_optional_limit(self.max_export_w, "max_export_w", s)
        if type(self.has_generation) is not bool:
            raise ConfigError("has_generation", "must be a boolean", s)


@dataclass(frozen=True)
class Feeder:
    feeder_id: str
    max_import_w: int | None = None  # into the feeder from the rest of the community
    max_export_w: int | None = None  # out of the feeder to the rest of the community

    def __post_init__(self):
        _check_id(self.feeder_id, "feeder_id", "feeder")
        s = f"feeder {self.feeder_id}"
        _check_optional_limit(self.max_import_w, "max_import_w", s)
        _check_optional_limit(self.max_export_w, "max_export_w", s)


@dataclass(frozen=True)
class Community:
    """Who may trade and where they sit in the network."""

    members: tuple[Member, ...]
    feeders: tuple[Feeder, ...] = ()
    by_id: dict[str, Member] = field(init=False, repr=False, compare=False)
    feeder_by_id: dict[str, Feeder] = field(init=False, repr=False, compare=False)
    # For clearing large books: the member ids as a set (set operations against a set probe
    # one table, against a dict two: 2.4x faster here), and the members with a limit at their
    # connection point, usually few.
    member_ids: frozenset[str] = field(init=False, repr=False, compare=False)
    limited_members: tuple[Member, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        # Canonical order, so equal communities encode to equal bytes.
        members = tuple(sorted(self.members, key=lambda m: m.member_id))
        feeders = tuple(sorted(self.feeders, key=lambda f: f.feeder_id))
        object.__setattr__(self, "members", members)
        object.__setattr__(self, "feeders", feeders)
        by_id = {m.member_id: m for m in members}
        feeder_by_id = {f.feeder_id: f for f in feeders}
        if len(by_id) != len(members):
            raise ConfigError("member_id", "duplicate member id", "community")
        if len(feeder_by_id) != len(feeders):
            raise ConfigError("feeder_id", "duplicate feeder id", "community")
        for m in members:
            # A feeder without limits need not be listed.
            feeder_by_id.setdefault(m.feeder_id, Feeder(m.feeder_id))
        object.__setattr__(self, "by_id", by_id)
        object.__setattr__(self, "feeder_by_id", feeder_by_id)
        object.__setattr__(self, "member_ids", frozenset(by_id))
        object.__setattr__(self, "limited_members", tuple(
            m for m in members if m.max_import_w is not None or m.max_export_w is not None))


def validate_order(order: Order, config: MarketConfig, community: Community,
                   interval_start_ms: int) -> None:
    """Raise OrderError naming the first bad field; checks across orders are in BookRules."""
    if type(order) is not Order:
        raise OrderError("order", f"must be an Order, got {type(order).__name__}")
    _check_id(order.order_id, "order_id", "order", OrderError)
    s = f"order {order.order_id}"
    _check_id(order.member_id, "member_id", s, OrderError)
    if order.member_id not in community.by_id:
        raise OrderError("member_id", f"unknown member {order.member_id!r}", s)
    if order.side not in (Side.BID, Side.OFFER):
        raise OrderError("side", "must be 'bid' or 'offer'", s)
    _check_int(order.energy_wh, "energy_wh", s, minimum=1, error=OrderError)
    _check_price(order.price_minor_per_kwh, "price_minor_per_kwh", s, config)
    _check_int(order.ts_ms, "ts_ms", s, minimum=0, error=OrderError)
    _check_int(order.interval_start_ms, "interval_start_ms", s, error=OrderError)
    if order.interval_start_ms != interval_start_ms:
        raise OrderError("interval_start_ms",
                         f"is for interval {order.interval_start_ms}, not {interval_start_ms}", s)
    gate_ms = interval_start_ms - config.gate_closure_lead_ms
    if order.ts_ms > gate_ms:
        raise OrderError("ts_ms", f"entered at {order.ts_ms}, after gate closure at {gate_ms}", s)


def _check_price(price, name: str, subject: str, config: MarketConfig) -> None:
    _check_int(price, name, subject, error=OrderError)
    if not config.feed_in_minor_per_kwh <= price <= config.retail_minor_per_kwh:
        raise OrderError(name, f"{price} is outside [feed-in {config.feed_in_minor_per_kwh}, "
                               f"retail {config.retail_minor_per_kwh}]", subject)


class BookColumns(NamedTuple):
    """An admitted book as columns, in input order: what clearing reads instead of Orders.

    The integer columns are exact (`int_array`: int64, or Python ints where a value would
    not fit), so no result depends on overflow. The ids are object arrays rather than lists
    because the garbage collector does not traverse numpy arrays: every collection that building
    the trades triggers would otherwise visit all of the book's strings again.
    """

    order_id: np.ndarray             # object: str
    member_id: np.ndarray            # object: str
    is_bid: np.ndarray               # bool: a bid, else an offer
    energy_wh: np.ndarray
    price_minor_per_kwh: np.ndarray
    ts_ms: np.ndarray


_ORDER_FIELDS = len(Order._fields)


_PRINTABLE_ASCII = bytes(range(0x20, 0x7F))


def _printable(text: str) -> bool:
    """str.isprintable, 2.5x faster for ASCII (deleting the printable bytes must leave none)."""
    if text.isascii():
        return not text.encode("ascii").translate(None, _PRINTABLE_ASCII)
    return text.isprintable()


class BookRules:
    """The checks across one interval's orders: unique ids, and each member on one side only.

    One side per member per interval rules out self-trades without a matching-time exception.
    """

    def __init__(self, config: MarketConfig, community: Community, interval_start_ms: int):
        if type(interval_start_ms) is not int or interval_start_ms % config.interval_ms:
            raise OrderError("interval_start_ms", "is not aligned to the market interval", "book")
        self.config = config
        self.community = community
        self.interval_start_ms = interval_start_ms
        self._floor = config.feed_in_minor_per_kwh
        self._cap = config.retail_minor_per_kwh
        self._gate_ms = interval_start_ms - config.gate_closure_lead_ms
        self._ids: set[str] = set()
        self._members_on: dict[Side, set[str]] = {Side.BID: set(), Side.OFFER: set()}

    def _other_side(self, side: Side) -> set[str]:
        return self._members_on[Side.OFFER if side == Side.BID else Side.BID]

    def admit(self, order: Order) -> None:
        """Admit one order or raise OrderError; a rejected order changes nothing."""
        # One fused test of the rules in validate_order and _claim, which then run only to name
        # the failure: checking field by field would dominate the time to clear a large book.
        if type(order) is Order:
            order_id, member_id, side, energy_wh, price, ts_ms, interval_start_ms = order
            if (type(order_id) is str and 0 < len(order_id) <= MAX_ID_LEN
                    and order_id.isprintable()
                    and type(member_id) is str and member_id in self.community.by_id
                    and (side == Side.BID or side == Side.OFFER)
                    and type(energy_wh) is int and energy_wh > 0
                    and type(price) is int and self._floor <= price <= self._cap
                    and type(ts_ms) is int and 0 <= ts_ms <= self._gate_ms
                    and type(interval_start_ms) is int
                    and interval_start_ms == self.interval_start_ms
                    and order_id not in self._ids
                    and member_id not in self._other_side(side)):
                self._ids.add(order_id)
                self._members_on[side].add(member_id)
                return
        validate_order(order, self.config, self.community, self.interval_start_ms)
        self._claim(order.order_id, "order_id", order.member_id, order.side,
                    f"order {order.order_id}")
        raise RuntimeError(f"order {order.order_id}: validation paths disagree")

    def admit_book(self, orders: Iterable[Order]) -> BookColumns:
        """Admit a whole book at once; return it as columns, in input order.

        The same rules as `admit`, checked column by column with C-level builtins (set, map,
        min, max) and numpy: checking order by order would dominate the time to clear a large
        book. If the book fails, `admit` runs order by order to raise the first bad order's
        error.
        """
        orders = list(orders)
        checked = self._check_columns(orders)
        if checked is None:
            self._raise_first_error(orders)
        book, ids, members = checked
        is_bid = book.is_bid.tolist()
        bidders = set(compress(members, is_bid))
        sellers = set(compress(members, map(not_, is_bid)))
        old_bidders, old_sellers = self._members_on[Side.BID], self._members_on[Side.OFFER]
        known = self.community.member_ids
        if (bidders.difference(known) or sellers.difference(known)
                or not (bidders.isdisjoint(sellers) and bidders.isdisjoint(old_sellers)
                        and sellers.isdisjoint(old_bidders))):
            self._raise_first_error(orders)
        # Merge the (usually few) earlier entries into the new sets, not the other way round.
        ids |= self._ids
        bidders |= old_bidders
        sellers |= old_sellers
        self._ids, self._members_on = ids, {Side.BID: bidders, Side.OFFER: sellers}
        return book

    def _raise_first_error(self, orders: list[Order]) -> None:
        for order in orders:
            self.admit(order)
        raise RuntimeError("book: validation paths disagree")

    def _check_columns(self, orders: list[Order]
                       ) -> tuple[BookColumns, set[str], list[str]] | None:
        """(the book as columns, its id set, its member ids) if every order passes `admit`'s
        field rules and the ids are new and unique; else None."""
        try:
            if not set(map(type, orders)) <= {Order}:
                return None
            # One flat list, then strided slices: 2.7x fewer instructions than an itemgetter
            # map per field.
            flat = list(chain.from_iterable(orders))
            ids, members, sides, energy_wh, prices, ts_ms, starts_ms = (
                flat[i::_ORDER_FIELDS] for i in range(_ORDER_FIELDS))
            id_set, id_lengths = set(ids), set(map(len, ids))
            if not (len(id_set) == len(ids) and self._ids.isdisjoint(id_set)
                    and set(map(type, chain(ids, members))) <= {str}
                    and 0 not in id_lengths and max(id_lengths, default=0) <= MAX_ID_LEN
                    and _printable("".join(ids))  # one C scan instead of a call per id
                    and set(sides) <= {Side.BID, Side.OFFER}
                    and set(map(type, chain(energy_wh, prices, ts_ms, starts_ms))) <= {int}
                    and set(starts_ms) <= {self.interval_start_ms}):
                return None
        except TypeError:  # an unhashable or unorderable field; `admit` names it
            return None
        book = BookColumns(np.array(ids, dtype=object), np.array(members, dtype=object),
                           np.fromiter(map(eq, sides, repeat(Side.BID)), bool, len(sides)),
                           int_array(energy_wh), int_array(prices), int_array(ts_ms))
        if orders and not (book.energy_wh.min() > 0
                           and self._floor <= book.price_minor_per_kwh.min()
                           and book.price_minor_per_kwh.max() <= self._cap
                           and 0 <= book.ts_ms.min() and book.ts_ms.max() <= self._gate_ms):
            return None
        return book, id_set, members

    def admit_request(self, request: EnergyRequest) -> None:
        validate_request(request, self.config, self.community)
        s = f"request {request.request_id}"
        if not request.window_start_ms <= self.interval_start_ms < request.window_end_ms:
            raise OrderError("window_start_ms", "window does not cover interval "
                                                f"{self.interval_start_ms}", s)
        self._claim(request.request_id, "request_id", request.member_id, Side.BID, s)

    def _claim(self, item_id: str, id_field: str, member_id: str, side: Side,
               subject: str) -> None:
        if item_id in self._ids:
            raise OrderError(id_field, "duplicate id in this interval", subject)
        if member_id in self._other_side(side):
            raise OrderError("side", f"member {member_id} already trades on the other side "
                                     "in this interval", subject)
        self._ids.add(item_id)
        self._members_on[side].add(member_id)


class EnergyRequest(NamedTuple):
    """Prepaid demand: energy for a time window at a reference spot price, filled from offers."""

    request_id: str
    member_id: str
    energy_wh: int
    window_start_ms: int  # first interval of the window
    window_end_ms: int    # exclusive
    spot_price_minor_per_kwh: int
    ts_ms: int


def validate_request(request: EnergyRequest, config: MarketConfig, community: Community) -> None:
    _check_id(request.request_id, "request_id", "request", OrderError)
    s = f"request {request.request_id}"
    _check_id(request.member_id, "member_id", s, OrderError)
    if request.member_id not in community.by_id:
        raise OrderError("member_id", f"unknown member {request.member_id!r}", s)
    _check_int(request.energy_wh, "energy_wh", s, minimum=1, error=OrderError)
    for name in ("window_start_ms", "window_end_ms"):
        _check_int(getattr(request, name), name, s, minimum=0, error=OrderError)
        if getattr(request, name) % config.interval_ms:
            raise OrderError(name, "is not aligned to the market interval", s)
    if request.window_end_ms <= request.window_start_ms:
        raise OrderError("window_end_ms", "must be after window_start_ms", s)
    _check_price(request.spot_price_minor_per_kwh, "spot_price_minor_per_kwh", s, config)
    _check_int(request.ts_ms, "ts_ms", s, minimum=0, error=OrderError)
    gate_ms = request.window_start_ms - config.gate_closure_lead_ms
    if request.ts_ms > gate_ms:
        raise OrderError("ts_ms", f"entered at {request.ts_ms}, after gate closure at {gate_ms}", s)


class TradeKind(StrEnum):
    ORDER = "order"      # bid matched in the auction; the buyer pays at settlement
    REQUEST = "request"  # energy request; paid from the requester's escrow


class Trade(NamedTuple):
    """Energy from seller to buyer at one price; the buyer also pays the grid fee to the DSO."""

    bid_id: str    # the bid's order id, or the energy request's id
    offer_id: str
    buyer_id: str
    seller_id: str
    energy_wh: int
    price_minor_per_kwh: int
    fee_minor_per_kwh: int
    bid_price_minor_per_kwh: int    # the buyer's limit (a request's spot price)
    offer_price_minor_per_kwh: int  # the seller's limit
    kind: TradeKind = TradeKind.ORDER

    @property
    def seller_receives_milli_minor(self) -> int:
        return self.energy_wh * self.price_minor_per_kwh

    @property
    def fee_milli_minor(self) -> int:
        return self.energy_wh * self.fee_minor_per_kwh

    @property
    def buyer_pays_milli_minor(self) -> int:
        return self.energy_wh * (self.price_minor_per_kwh + self.fee_minor_per_kwh)

    @property
    def welfare_milli_minor(self) -> int:
        """Gains from trade at the participants' limits, before grid fees."""
        return self.energy_wh * (self.bid_price_minor_per_kwh - self.offer_price_minor_per_kwh)
