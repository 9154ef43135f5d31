"""Provenance of a trade (LEDGER.md §11): the readings, orders, clearing and settlement behind
it, found by following the references stored in the state (no scan, no history)."""


def provenance(state, trade_id: str) -> dict | None:
    """`state` is anything with `get(table, key)` (a State or an overlay); None if no such trade."""
    trade = state.get("trades", trade_id)
    if trade is None:
        return None
    start = trade["interval_start_s"]
    interval = state.get("intervals", str(start))
    parties = {}
    for role, order_id in (("buyer", trade["buy_order"]), ("seller", trade["sell_order"])):
        household = trade[role]
        parties[role] = {
            "household": household,
            "member": state.get("members", household),
            "order": {"tx": order_id, **state.get("orders", order_id)},
            "reading": state.get("readings", f"{household}/{start}"),
        }
    txs = {trade["clearing_tx"], trade["buy_order"], trade["sell_order"], trade["settlement_tx"]}
    txs |= {p["member"]["tx"] for p in parties.values()}
    txs |= {p["reading"]["tx"] for p in parties.values() if p["reading"]}
    return {
        "trade": {"id": trade_id, **trade},
        "interval_start_s": start,
        "clearing_tx": interval["clearing_tx"],
        "settlement_tx": interval["settlement_tx"],
        "buyer": parties["buyer"],
        "seller": parties["seller"],
        "txs": sorted(txs - {""}),      # every signed tx behind the trade; "" marks genesis members
    }
