"""Settlement after delivery: cleared trades plus deviations against the utility, as transfers.

Per interval and member, with net energy signed export-positive:
    deviation_wh = metered_net_wh - (sold_wh - bought_wh)
A negative deviation (shortfall: used more or produced less than cleared) is bought from the
utility at the retail price; a positive one (surplus) is sold to it at the feed-in price. A member
who did not trade settles its whole metered net this way, which is also the reference case
"without the market" used for the cost-reduction metric.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Iterable, Literal, Mapping, NamedTuple

from .arith import div_half_even
from .clearing import ClearingResult
from .model import DSO, ESCROW, UTILITY, Community, MarketConfig, MarketError, Trade, TradeKind

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class SettlementError(MarketError):
    """Settlement is impossible with the data given; nothing was settled."""


class TransferKind(StrEnum):
    P2P = "p2p"                # energy seller -> buyer, payment buyer (or escrow) -> seller
    GRID_FEE = "grid_fee"      # payment buyer (or escrow) -> DSO
    SHORTFALL = "shortfall"    # energy utility -> member at retail
    SURPLUS = "surplus"        # energy member -> utility at feed-in
    ESCROW_DEPOSIT = "escrow_deposit"  # energy request prepaid: member -> escrow
    ESCROW_REFUND = "escrow_refund"    # unspent prepayment: escrow -> member


class Transfer(NamedTuple):
    """One settlement leg: energy and its payment in one record (either may be zero)."""

    interval_start_ms: int
    kind: TransferKind
    ref: str          # "bid_id>offer_id" for trades, else the member or request id
    energy_from: str  # "" when no energy moves
    energy_to: str
    energy_wh: int
    payer: str
    payee: str
    amount_milli_minor: int


@dataclass(frozen=True)
class IntervalSettlement:
    interval_start_ms: int
    retail_minor_per_kwh: int   # tariffs in force, kept for statements' reference cost
    feed_in_minor_per_kwh: int
    metered_net_wh: tuple[tuple[str, int], ...]  # (member_id, export-positive Wh), sorted
    trades: tuple[Trade, ...]
    transfers: tuple[Transfer, ...]


def settle_interval(result: ClearingResult, metered_net_wh: Mapping[str, int],
                    config: MarketConfig, community: Community) -> IntervalSettlement:
    """All transfers for one delivered interval, or SettlementError and nothing."""
    t0 = result.interval_start_ms
    subject = f"interval {t0}"
    for member_id, net_wh in metered_net_wh.items():
        if member_id not in community.by_id:
            raise SettlementError("metered_net_wh", f"unknown member {member_id!r}", subject)
        if type(net_wh) is not int:
            raise SettlementError("metered_net_wh", f"{member_id}: must be an integer", subject)

    transfers: list[Transfer] = []
    contracted_wh = dict.fromkeys(metered_net_wh, 0)
    for trade in result.trades:
        for member_id in (trade.buyer_id, trade.seller_id):
            if member_id not in metered_net_wh:
                raise SettlementError("metered_net_wh", f"missing for {member_id}, who traded",
                                      subject)
        contracted_wh[trade.seller_id] += trade.energy_wh
        contracted_wh[trade.buyer_id] -= trade.energy_wh
        payer = ESCROW if trade.kind == TradeKind.REQUEST else trade.buyer_id
        ref = f"{trade.bid_id}>{trade.offer_id}"
        transfers.append(Transfer(t0, TransferKind.P2P, ref, trade.seller_id, trade.buyer_id,
                                  trade.energy_wh, payer, trade.seller_id,
                                  trade.seller_receives_milli_minor))
        if trade.fee_milli_minor:
            transfers.append(Transfer(t0, TransferKind.GRID_FEE, ref, "", "", 0, payer, DSO,
                                      trade.fee_milli_minor))

    for member_id in sorted(metered_net_wh):
        deviation_wh = metered_net_wh[member_id] - contracted_wh[member_id]
        if deviation_wh < 0:
            transfers.append(Transfer(t0, TransferKind.SHORTFALL, member_id, UTILITY, member_id,
                                      -deviation_wh, member_id, UTILITY,
                                      -deviation_wh * config.retail_minor_per_kwh))
        elif deviation_wh > 0:
            transfers.append(Transfer(t0, TransferKind.SURPLUS, member_id, member_id, UTILITY,
                                      deviation_wh, UTILITY, member_id,
                                      deviation_wh * config.feed_in_minor_per_kwh))

    _check_balanced(transfers, metered_net_wh, subject)
    return IntervalSettlement(t0, config.retail_minor_per_kwh, config.feed_in_minor_per_kwh,
                              tuple(sorted(metered_net_wh.items())), result.trades,
                              tuple(transfers))


def _check_balanced(transfers: list[Transfer], metered_net_wh: Mapping[str, int],
                    subject: str) -> None:
    """Every member's settled energy equals its meter; no negative leg. Guards the invariants."""
    received_wh = dict.fromkeys(metered_net_wh, 0)
    for t in transfers:
        if t.energy_wh < 0 or t.amount_milli_minor < 0:
            raise SettlementError("transfers", f"negative leg {t}", subject)
        if t.energy_wh:
            if t.energy_to in received_wh:
                received_wh[t.energy_to] += t.energy_wh
            if t.energy_from in received_wh:
                received_wh[t.energy_from] -= t.energy_wh
    for member_id, net_wh in metered_net_wh.items():
        if received_wh[member_id] != -net_wh:
            raise SettlementError("transfers", f"{member_id} settles {received_wh[member_id]} Wh "
                                               f"in, but its meter says {-net_wh}", subject)


def money_balances(transfers: Iterable[Transfer]) -> dict[str, int]:
    """Net money per account (received minus paid); the values always sum to zero."""
    balance: dict[str, int] = {}
    for t in transfers:
        balance[t.payer] = balance.get(t.payer, 0) - t.amount_milli_minor
        balance[t.payee] = balance.get(t.payee, 0) + t.amount_milli_minor
    return balance


def reference_cost_milli_minor(net_wh: int, retail_minor_per_kwh: int,
                               feed_in_minor_per_kwh: int) -> int:
    """Cost without the market: all import at retail, all export at feed-in (negative = income)."""
    if net_wh < 0:
        return -net_wh * retail_minor_per_kwh
    return -net_wh * feed_in_minor_per_kwh


def reduction_bp(reference_milli_minor: int, cost_milli_minor: int) -> int | None:
    """(reference - with market) / |reference| in basis points (760 = 7.60 %); None if no reference.

    The absolute value keeps "positive = cheaper with the market" for households whose reference
    is a net income.
    """
    if reference_milli_minor == 0:
        return None
    return div_half_even((reference_milli_minor - cost_milli_minor) * 10_000,
                         abs(reference_milli_minor))


@dataclass(frozen=True)
class Statement:
    """One member's (or the community's) settled totals over a day or a month (UTC)."""

    member_id: str
    period: str  # "YYYY-MM-DD" or "YYYY-MM"
    bought_wh: int = 0
    bought_milli_minor: int = 0    # energy price paid to other members
    fees_milli_minor: int = 0      # grid fees paid on those purchases
    sold_wh: int = 0
    sold_milli_minor: int = 0
    grid_import_wh: int = 0        # shortfall bought from the utility at retail
    grid_import_milli_minor: int = 0
    grid_export_wh: int = 0        # surplus sold to the utility at feed-in
    grid_export_milli_minor: int = 0
    reference_cost_milli_minor: int = 0

    @property
    def cost_milli_minor(self) -> int:
        return (self.bought_milli_minor + self.fees_milli_minor - self.sold_milli_minor
                + self.grid_import_milli_minor - self.grid_export_milli_minor)

    @property
    def reduction_bp(self) -> int | None:
        return reduction_bp(self.reference_cost_milli_minor, self.cost_milli_minor)

    def __add__(self, other: Statement) -> Statement:
        sums = {name: getattr(self, name) + getattr(other, name)
                for name in self.__dataclass_fields__ if name not in ("member_id", "period")}
        return Statement(self.member_id, self.period, **sums)


def period_of(ts_ms: int, period: Literal["day", "month"]) -> str:
    day = (EPOCH + timedelta(milliseconds=ts_ms)).date()  # exact integer arithmetic, UTC
    return day.isoformat() if period == "day" else day.isoformat()[:7]


def statements(settlements: Iterable[IntervalSettlement],
               period: Literal["day", "month"]) -> list[Statement]:
    """Per member and period, sorted by (period, member_id)."""
    if period not in ("day", "month"):
        raise ValueError("period must be 'day' or 'month'")
    totals: dict[tuple[str, str], Statement] = {}

    def add(member_id: str, key: str, **amounts) -> None:
        slot = (key, member_id)
        totals[slot] = totals.get(slot, Statement(member_id, key)) + Statement(
            member_id, key, **amounts)

    for s in settlements:
        key = period_of(s.interval_start_ms, period)
        for member_id, net_wh in s.metered_net_wh:
            add(member_id, key, reference_cost_milli_minor=reference_cost_milli_minor(
                net_wh, s.retail_minor_per_kwh, s.feed_in_minor_per_kwh))
        for t in s.trades:
            add(t.buyer_id, key, bought_wh=t.energy_wh,
                bought_milli_minor=t.seller_receives_milli_minor, fees_milli_minor=t.fee_milli_minor)
            add(t.seller_id, key, sold_wh=t.energy_wh, sold_milli_minor=t.seller_receives_milli_minor)
        for t in s.transfers:
            if t.kind == TransferKind.SHORTFALL:
                add(t.energy_to, key, grid_import_wh=t.energy_wh,
                    grid_import_milli_minor=t.amount_milli_minor)
            elif t.kind == TransferKind.SURPLUS:
                add(t.energy_from, key, grid_export_wh=t.energy_wh,
                    grid_export_milli_minor=t.amount_milli_minor)
    return [totals[slot] for slot in sorted(totals)]


@dataclass(frozen=True)
class GroupReduction:
    """The papers' metric for a group of households (prosumers or consumers) over one period."""

    households: int
    reference_cost_milli_minor: int
    cost_milli_minor: int
    reduction_bp: int | None       # of the group's summed costs
    min_reduction_bp: int | None   # range over households with a reference cost
    max_reduction_bp: int | None


@dataclass(frozen=True)
class CommunityReport:
    period: str
    totals: Statement  # member_id "community"; P2P money cancels out inside it
    prosumers: GroupReduction
    consumers: GroupReduction


def community_report(member_statements: Iterable[Statement], community: Community,
                     period: str) -> CommunityReport:
    chosen = [s for s in member_statements if s.period == period]
    totals = sum(chosen, Statement("community", period))

    def group(has_generation: bool) -> GroupReduction:
        members = [s for s in chosen if community.by_id[s.member_id].has_generation == has_generation]
        reference = sum(s.reference_cost_milli_minor for s in members)
        cost = sum(s.cost_milli_minor for s in members)
        each = [s.reduction_bp for s in members if s.reduction_bp is not None]
        return GroupReduction(len(members), reference, cost, reduction_bp(reference, cost),
                              min(each, default=None), max(each, default=None))

    return CommunityReport(period, totals, group(True), group(False))
