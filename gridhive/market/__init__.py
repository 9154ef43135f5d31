"""The market core: clearing and settlement as pure, deterministic, integer-only functions.

Shared by the controller's market loop and the ledger's validators, which re-execute clearing and
settlement and compare canonical bytes. No I/O here. Rules: docs/MARKET.md.
"""
from .arith import div_half_even
from .clearing import (ClearingResult, DepthLevel, OrderBook, RoundState, book_depth, clear,
                       marginal_price, mean_bid_price, sort_bids, sort_offers)
from .codec import canonical_bytes, digest, from_plain, to_plain
from .model import (DSO, ESCROW, UTILITY, BookRules, Community, ConfigError, EnergyRequest, Feeder,
                    MarketConfig, MarketError, Mechanism, Member, Order, OrderError, PriceRule,
                    Side, Trade, TradeKind, validate_order, validate_request)
from .network import ConnectionLimits, NetworkCheck
from .requests import (RequestSettlement, deposit, escrow_milli_minor, filled_wh, remaining_wh,
                       settle_request)
from .settlement import (CommunityReport, GroupReduction, IntervalSettlement, SettlementError,
                         Statement, Transfer, TransferKind, community_report, money_balances,
                         period_of, reduction_bp, reference_cost_milli_minor, settle_interval,
                         statements)

__all__ = [
    "DSO", "ESCROW", "UTILITY", "BookRules", "ClearingResult", "Community", "CommunityReport",
    "ConfigError", "ConnectionLimits", "DepthLevel", "EnergyRequest", "Feeder", "GroupReduction",
    "IntervalSettlement", "MarketConfig", "MarketError", "Mechanism", "Member", "NetworkCheck",
    "Order", "OrderBook", "OrderError", "PriceRule", "RequestSettlement", "RoundState",
    "SettlementError", "Side", "Statement", "Trade", "TradeKind", "Transfer", "TransferKind",
    "book_depth", "canonical_bytes", "clear", "community_report", "deposit", "digest",
    "div_half_even", "escrow_milli_minor", "filled_wh", "from_plain", "marginal_price",
    "mean_bid_price", "money_balances", "sort_bids", "sort_offers", "period_of", "reduction_bp",
    "reference_cost_milli_minor", "remaining_wh", "settle_interval", "settle_request",
    "statements", "to_plain", "validate_order", "validate_request",
]
