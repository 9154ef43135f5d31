"""The market contract: this package's clearing and settlement as the ledger's market rules
(docs/LEDGER.md §3.4). Validators re-execute it for every clearing and settlement transaction and
must agree byte for byte; the controller's market loop runs the same code to know what to submit.
Pure and integer-only; no I/O.

Ledger -> market:
- the chain's genesis params -> `MarketConfig` (seconds become ms), its `feeders` -> `Feeder`s;
- an admitted member -> `Member(household, feeder or DEFAULT_FEEDER, its connection limits,
  has_generation = role is prosumer)`;
- an order record -> `Order(order_id = the order's tx id, member_id = household, buy -> bid,
  sell -> offer, ts_ms = the time of the block that included it, interval in ms)`.
Results are the market's canonical plain form (`to_plain`): ints, strings, lists, objects, null.

Money: the market computes exact milli-minor amounts; ledger balances are whole minor units. Each
transfer's amount is converted once, rounded half to even (the market's one rounding rule), and
the same amount is debited from the payer and credited to the payee, so money is conserved exactly.
"""
from __future__ import annotations

from typing import Mapping

from .arith import div_half_even
from .clearing import ClearingResult, clear
from .codec import to_plain
from .model import (RESERVED_ACCOUNTS, Community, ConfigError, Feeder, MarketConfig, Mechanism, Member, Order,
                    Side, Trade, TradeKind)
from .settlement import IntervalSettlement, Transfer, TransferKind, settle_interval

DEFAULT_FEEDER = "main"       # a member whose certificate names no feeder
SIDES = {"buy": Side.BID, "sell": Side.OFFER}
_LEDGER_PARAM = {"interval_ms": "interval_s", "gate_closure_lead_ms": "gate_closure_s"}


def minor_units(amount_milli_minor: int) -> int:
    """The ledger's amount for a market amount: whole minor units, half to even."""
    return div_half_even(amount_milli_minor, 1000)


def market_config(params: Mapping) -> MarketConfig:
    """The chain's market rules from its genesis params; ValueError names the ledger param."""
    try:
        return MarketConfig(
            feed_in_minor_per_kwh=params["feed_in_minor_per_kwh"], retail_minor_per_kwh=params["retail_minor_per_kwh"],
            mechanism=params["mechanism"], price_rule=params["price_rule"], k_permille=params["k_permille"],
            fee_same_feeder_minor_per_kwh=params["fee_same_feeder_minor_per_kwh"],
            fee_cross_feeder_minor_per_kwh=params["fee_cross_feeder_minor_per_kwh"],
            interval_ms=params["interval_s"] * 1000, gate_closure_lead_ms=params["gate_closure_s"] * 1000)
    except ConfigError as exc:
        raise ValueError(f"params: {_LEDGER_PARAM.get(exc.field, exc.field)}: {exc.reason}") from None


class ChainContract:
    """The contract bound to one chain (`MarketContract.for_chain`)."""

    reserved_accounts = RESERVED_ACCOUNTS

    def __init__(self, config: MarketConfig, feeders: tuple[Feeder, ...] = ()):
        self.config = config
        self.feeders = feeders

    def community(self, members: Mapping[str, Mapping]) -> Community:
        """The community of these admitted members (household -> member record)."""
        return Community(tuple(
            Member(household, m.get("feeder", DEFAULT_FEEDER), m.get("max_import_w"), m.get("max_export_w"),
                   m["role"] == "prosumer")
            for household, m in members.items()), self.feeders)

    def orders(self, interval_start_s: int, records: list[Mapping]) -> list[Order]:
        """The market's orders for order records, each with its "id" (the order's tx id)."""
        start_ms = interval_start_s * 1000
        return [Order(o["id"], o["household"], SIDES[o["side"]], o["energy_wh"], o["price_minor_per_kwh"], o["ts_ms"],
                      start_ms) for o in records]

    def clear(self, members: Mapping[str, Mapping], interval_start_s: int, orders: list[Mapping]) -> dict:
        """The interval's clearing, as plain data (a ClearingResult)."""
        return to_plain(clear(self.orders(interval_start_s, orders), self.config, self.community(members),
                              interval_start_s * 1000))

    def settle(self, members: Mapping[str, Mapping], interval_start_s: int, result: Mapping,
               readings: Mapping[str, Mapping]) -> dict:
        """Every trade as cleared, each household's deviation from its metered net energy
        (export − import) against the utility: the market's transfers, each with the minor units
        the ledger moves."""
        metered_net_wh = {h: r["export_wh"] - r["import_wh"] for h, r in readings.items()}
        clearing = ClearingResult(result["interval_start_ms"], Mechanism(result["mechanism"]),
                                  result["clearing_price_minor_per_kwh"], tuple(map(_trade, result["trades"])),
                                  result["curtailed_wh"])
        settled = settle_interval(clearing, metered_net_wh, self.config, self.community(members))
        return {"metered_net_wh": dict(settled.metered_net_wh),
                "transfers": [{**to_plain(t), "amount_minor": minor_units(t.amount_milli_minor)}
                              for t in settled.transfers]}

    def interval_settlement(self, interval_start_s: int, settlement: Mapping,
                            trades: list[Mapping]) -> IntervalSettlement:
        """The market's settlement of a settled interval, from its ledger records (for statements)."""
        return IntervalSettlement(
            interval_start_s * 1000, self.config.retail_minor_per_kwh, self.config.feed_in_minor_per_kwh,
            tuple(sorted(settlement["metered_net_wh"].items())),
            tuple(map(_trade, trades)),
            tuple(Transfer(*(t[k] for k in Transfer._fields))._replace(kind=TransferKind(t["kind"]))
                  for t in settlement["transfers"]))


def _trade(plain: Mapping) -> Trade:
    """A trade of a clearing result the ledger holds (its types checked when it was cleared);
    direct, since `from_plain`'s type walk cost 0.2 s per 1,000 trades."""
    return Trade(*(plain[k] for k in Trade._fields))._replace(kind=TradeKind(plain["kind"]))


class MarketContract:
    """What a validator loads: `rules = "gridhive.market.contract:MarketContract"` (the default)."""

    def for_chain(self, params: Mapping, feeders: Mapping) -> ChainContract:
        try:
            bound = tuple(Feeder(feeder_id, f.get("max_import_w"), f.get("max_export_w"))
                          for feeder_id, f in sorted(feeders.items()))
        except (ConfigError, AttributeError) as exc:
            raise ValueError(f"feeders: {exc}") from None
        return ChainContract(market_config(params), bound)
