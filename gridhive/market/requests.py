"""Energy requests: prepaid demand for a time window, filled from offers, the rest refunded.

The requester pays energy_wh x (spot price + the highest grid fee) into escrow before the window
opens. In each interval of the window the request goes before the auction and takes the cheapest
offers at or below its spot price, at the spot price (`clearing.clear`, oldest request first).
Fills and their grid fees are paid from escrow at each interval's settlement; after the window the
unspent escrow goes back. Because no fill can cost more per Wh than the escrow rate, the refund is
never negative.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .clearing import ClearingResult
from .model import ESCROW, Community, EnergyRequest, MarketConfig, TradeKind, validate_request
from .settlement import SettlementError, Transfer, TransferKind


def escrow_milli_minor(request: EnergyRequest, config: MarketConfig) -> int:
    return request.energy_wh * (request.spot_price_minor_per_kwh + config.max_fee_minor_per_kwh)


def deposit(request: EnergyRequest, config: MarketConfig, community: Community) -> Transfer:
    """The prepayment into escrow, made when the request is accepted (checks it first)."""
    validate_request(request, config, community)
    return Transfer(request.window_start_ms, TransferKind.ESCROW_DEPOSIT, request.request_id, "",
                    "", 0, request.member_id, ESCROW, escrow_milli_minor(request, config))


def filled_wh(request: EnergyRequest, results: Iterable[ClearingResult]) -> int:
    return sum(t.energy_wh for r in results for t in r.trades
               if t.kind == TradeKind.REQUEST and t.bid_id == request.request_id)


def remaining_wh(request: EnergyRequest, results: Iterable[ClearingResult]) -> int:
    """What the request still needs, given the clearing results of earlier intervals."""
    return request.energy_wh - filled_wh(request, results)


@dataclass(frozen=True)
class RequestSettlement:
    request_id: str
    filled_wh: int
    escrow_milli_minor: int
    spent_milli_minor: int   # fills plus their grid fees, paid from escrow
    refund: Transfer         # escrow -> member; amount may be 0


def settle_request(request: EnergyRequest, config: MarketConfig,
                   results: Iterable[ClearingResult]) -> RequestSettlement:
    """Close a request after its window, given the clearing results of all its intervals."""
    trades = [t for r in results for t in r.trades
              if t.kind == TradeKind.REQUEST and t.bid_id == request.request_id]
    escrow = escrow_milli_minor(request, config)
    spent = sum(t.buyer_pays_milli_minor for t in trades)
    energy_wh = sum(t.energy_wh for t in trades)
    if energy_wh > request.energy_wh or spent > escrow:
        raise SettlementError("results", f"fills of {energy_wh} Wh costing {spent} exceed the "
                                         "request", f"request {request.request_id}")
    refund = Transfer(request.window_end_ms, TransferKind.ESCROW_REFUND, request.request_id, "",
                      "", 0, ESCROW, request.member_id, escrow - spent)
    return RequestSettlement(request.request_id, energy_wh, escrow, spent, refund)
