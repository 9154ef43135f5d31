"""The market rules validators re-execute (LEDGER.md §3.4). They are injected, so the ledger core
depends on no market: a validator loads them by import path (default: the market contract,
`gridhive.market.contract:MarketContract`).

This module is also the one definition of what the rules are given and when: the inputs of a
clearing and a settlement are read through any `get(table, key)` — the state inside a
transaction, or a client of a validator's API — so the controller's market loop hands the rules
exactly what every validator will."""
from typing import Callable, Protocol

Get = Callable[[str, str], object]          # get(table, key) -> value, or None when absent

# The market's trade as a clearing result carries it; a trade record is one plus ledger fields.
TRADE_KEYS = frozenset({"bid_id", "offer_id", "buyer_id", "seller_id", "energy_wh", "price_minor_per_kwh",
                        "fee_minor_per_kwh", "bid_price_minor_per_kwh", "offer_price_minor_per_kwh", "kind"})
RESULT_KEYS = frozenset({"interval_start_ms", "mechanism", "clearing_price_minor_per_kwh", "trades",
                         "curtailed_wh"})
TRANSFER_KEYS = frozenset({"interval_start_ms", "kind", "ref", "energy_from", "energy_to", "energy_wh", "payer",
                           "payee", "amount_milli_minor", "amount_minor"})


class ChainRules(Protocol):
    """The rules bound to one chain's parameters. Pure, deterministic, integer-only: a ValueError
    means the rules cannot handle these inputs (the transaction fails with `invalid_result`)."""

    reserved_accounts: frozenset[str]       # account names that are not keys: utility, DSO, escrow

    def clear(self, members: dict[str, dict], interval_start_s: int, orders: list[dict]) -> dict:
        """members: household -> member record, for the households in the book; orders: the
        interval's order records in chain order, each with its "id" -> the clearing result."""

    def settle(self, members: dict[str, dict], interval_start_s: int, result: dict,
               readings: dict[str, dict]) -> dict:
        """result: the interval's clearing result; readings: household -> {import_wh, export_wh}
        for every trader and attested household -> {"metered_net_wh", "transfers"}."""


class MarketRules(Protocol):
    def for_chain(self, params: dict, feeders: dict) -> ChainRules:
        """Bind to a genesis's params and feeders; ValueError naming a bad one."""


def new_interval() -> dict:
    """The record of an interval the first order or reading creates (§5.1)."""
    return {"status": "open", "orders": [], "ordered": {}, "readings": [], "trades": [], "clearing_tx": "",
            "settlement_tx": "", "clearing": {}, "settlement": {}}


def gate_closure_ms(params: dict, interval_start_s: int) -> int:
    """Orders are taken while block time is before this; clearing from it on."""
    return (interval_start_s - params["gate_closure_s"]) * 1000


def settlement_opens_ms(params: dict, interval_start_s: int) -> int:
    """Readings are taken while block time is before this (interval end + reading grace);
    settlement from it on."""
    return (interval_start_s + params["interval_s"] + params["reading_grace_s"]) * 1000


def _members(get: Get, households) -> dict[str, dict]:
    return {h: get("members", h) for h in sorted(set(households))}


def clearing_inputs(get: Get, interval_start_s: int) -> tuple[dict, list[dict]]:
    """(members, orders) for `ChainRules.clear`: the interval's orders in chain order."""
    interval = get("intervals", str(interval_start_s)) or new_interval()
    orders = [{"id": oid, **get("orders", oid)} for oid in interval["orders"]]
    return _members(get, (o["household"] for o in orders)), orders


def settlement_inputs(get: Get, interval_start_s: int) -> tuple[dict, dict, dict]:
    """(members, result, readings) for `ChainRules.settle`. The households settled are the traders
    and every household with a reading; a trader without one counts as metering zero (§3.3)."""
    interval = get("intervals", str(interval_start_s))
    trades = [get("trades", tid) for tid in interval["trades"]]
    result = {**interval["clearing"], "trades": [{k: t[k] for k in TRADE_KEYS} for t in trades]}
    households = set(interval["readings"]) | {t["buyer_id"] for t in trades} | {t["seller_id"] for t in trades}
    readings = {}
    for h in sorted(households):
        r = get("readings", f"{h}/{interval_start_s}") or {"import_wh": 0, "export_wh": 0}
        readings[h] = {"import_wh": r["import_wh"], "export_wh": r["export_wh"]}
    return _members(get, households), result, readings
