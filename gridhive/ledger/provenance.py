"""Provenance of a trade (LEDGER.md §11): the readings, orders, clearing and settlement behind it,
found by following the references stored in the state (no scan, no history)."""

_DEVIATIONS = ("shortfall", "surplus")


def provenance(state, trade_id: str) -> dict | None:
    """`state` is anything with `get(table, key)` (a State or an overlay); None if no such trade."""
    trade = state.get("trades", trade_id)
    if trade is None:
        return None
    start = trade["interval_start_s"]
    interval = state.get("intervals", str(start))
    transfers = interval["settlement"].get("transfers", [])
    parties = {}
    for role, household, order_id in (("buyer", trade["buyer_id"], trade["bid_id"]),
                                      ("seller", trade["seller_id"], trade["offer_id"])):
        parties[role] = {
            "household": household,
            "member": state.get("members", household),
            "order": {"tx": order_id, **state.get("orders", order_id)},
            "reading": state.get("readings", f"{household}/{start}"),
            # what its meter settled beyond its trades, against the utility
            "deviations": [t for t in transfers if t["kind"] in _DEVIATIONS and t["ref"] == household],
        }
    txs = {trade["clearing_tx"], trade["bid_id"], trade["offer_id"], trade["settlement_tx"]}
    txs |= {p["member"]["tx"] for p in parties.values()}
    txs |= {p["reading"]["tx"] for p in parties.values() if p["reading"]}
    return {
        "trade": {"id": trade_id, **trade},
        "interval_start_s": start,
        "clearing": interval["clearing"],
        "clearing_tx": interval["clearing_tx"],
        "settlement_tx": interval["settlement_tx"],
        "buyer": parties["buyer"],
        "seller": parties["seller"],
        "txs": sorted(txs - {""}),      # every signed tx behind the trade; "" marks genesis members
    }
