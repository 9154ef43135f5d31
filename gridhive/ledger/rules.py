"""The market contract validators re-execute (LEDGER.md §3.4): an injected, deterministic
`clear` and `settle`. `MidpointRules` stands in until gridhive.market provides the real rules."""
from typing import Protocol


class MarketRules(Protocol):
    def clear(self, interval_start_s: int, orders: list[dict]) -> dict:
        """orders: records in chain order, each with "id" -> {"trades": [{buy_order, sell_order, energy_wh, price_minor_per_kwh}]}"""

    def settle(self, interval_start_s: int, trades: list[dict], readings: dict[str, dict]) -> dict:
        """trades: trade records (with "id"); readings: household -> {import_wh, export_wh}
        -> {"trades": [{trade, delivered_wh, payment_minor}]}, one per trade, same order."""


class MidpointRules:
    """Highest bid with cheapest offer at the midpoint price (Quartierstrom pairing); settlement
    delivers what both meters confirm, each metered Wh used once."""

    def clear(self, interval_start_s: int, orders: list[dict]) -> dict:
        bids = sorted((o for o in orders if o["side"] == "buy"), key=lambda o: (-o["price_minor_per_kwh"], o["id"]))
        offers = sorted((o for o in orders if o["side"] == "sell"), key=lambda o: (o["price_minor_per_kwh"], o["id"]))
        left_wh = {o["id"]: o["energy_wh"] for o in orders}
        trades = []
        for bid in bids:
            for offer in offers:
                if offer["price_minor_per_kwh"] > bid["price_minor_per_kwh"]:
                    break
                if left_wh[bid["id"]] == 0:
                    break
                if left_wh[offer["id"]] == 0 or offer["household"] == bid["household"]:
                    continue
                energy_wh = min(left_wh[bid["id"]], left_wh[offer["id"]])
                left_wh[bid["id"]] -= energy_wh
                left_wh[offer["id"]] -= energy_wh
                trades.append({"buy_order": bid["id"], "sell_order": offer["id"], "energy_wh": energy_wh,
                               "price_minor_per_kwh": (bid["price_minor_per_kwh"] + offer["price_minor_per_kwh"]) // 2})
        return {"trades": trades}

    def settle(self, interval_start_s: int, trades: list[dict], readings: dict[str, dict]) -> dict:
        export_left_wh = {h: r["export_wh"] for h, r in readings.items()}
        import_left_wh = {h: r["import_wh"] for h, r in readings.items()}
        out = []
        for trade in trades:
            seller, buyer = trade["seller"], trade["buyer"]
            delivered_wh = min(trade["energy_wh"], export_left_wh[seller], import_left_wh[buyer])
            export_left_wh[seller] -= delivered_wh
            import_left_wh[buyer] -= delivered_wh
            out.append({"trade": trade["id"], "delivered_wh": delivered_wh,
                        "payment_minor": delivered_wh * trade["price_minor_per_kwh"] // 1000})
        return {"trades": out}
