"""From a household's forecast net position to market orders. Pure.

Per market interval the agent bids for its expected deficit or offers its expected surplus (the
median forecast, including the flexible loads it scheduled), never more, rounded down to whole Wh.

Limit prices (documented strategy: priced by forecast confidence). Unmatched energy is settled
with the utility: a shortfall is bought at the retail tariff R, an excess sold at the feed-in
tariff F. So for a *certain* position any P2P price inside [F, R] beats the utility, and the agent
bids R and offers at F. Uncertainty makes a trade risky: energy bought but not needed is resold
at F, energy sold but not produced is bought back at R. The agent therefore moves its limit toward
the middle of the band as confidence falls:

    confidence c = |net| / (|net| + spread / 2)    spread = width of the p10..p90 band of
                                                   load plus that of PV (a conservative sum)
    bid   = R - alpha * (1 - c) * (R - F)
    offer = F + alpha * (1 - c) * (R - F)          alpha = 0.5 by default: at zero confidence
                                                   both meet at the midpoint (F + R) / 2

Prices are whole minor units, always inside [F, R]. A daily budget caps what the bids could cost
if all were filled at their limits (energy x limit), in time order: a bid that would exceed the
remainder is cut to what it can still pay for.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gridhive.market import MarketConfig, Order, Side

FORECAST_SLOT_MS = 900_000


@dataclass(frozen=True)
class Position:
    """Per market interval: expected net import (+) / export (-) and its uncertainty, in Wh."""

    interval_start_ms: np.ndarray  # [n] int
    net_wh: np.ndarray             # [n]
    spread_wh: np.ndarray          # [n] >= 0


def position(day_start_ms: int, load_w, pv_w, load_band_w, pv_band_w, flex_w,
             interval_ms: int) -> Position:
    """Aggregate 15-min forecasts (W) into market intervals of interval_ms (a multiple of 15 min).

    load_band_w / pv_band_w: p90 - p10 per 15-min interval; flex_w: scheduled flexible load.
    """
    if interval_ms % FORECAST_SLOT_MS:
        raise ValueError(f"interval_ms {interval_ms} is not a multiple of the 15-min forecast")
    per = interval_ms // FORECAST_SLOT_MS
    to_wh = FORECAST_SLOT_MS / 3_600_000
    net = (np.asarray(load_w, np.float64) + np.asarray(flex_w, np.float64)
           - np.asarray(pv_w, np.float64)) * to_wh
    spread = (np.maximum(load_band_w, 0) + np.maximum(pv_band_w, 0)) * to_wh
    n = net.size // per
    starts = day_start_ms + interval_ms * np.arange(n, dtype=np.int64)
    return Position(starts, net[: n * per].reshape(n, per).sum(axis=1),
                    spread[: n * per].reshape(n, per).sum(axis=1))


def confidence(net_wh: float, spread_wh: float) -> float:
    magnitude = abs(net_wh)
    if magnitude <= 0:
        return 0.0
    return magnitude / (magnitude + max(spread_wh, 0.0) / 2.0)


def limit_price(side: Side, conf: float, config: MarketConfig, alpha: float = 0.5) -> int:
    floor, cap = config.feed_in_minor_per_kwh, config.retail_minor_per_kwh
    give = alpha * (1.0 - min(max(conf, 0.0), 1.0)) * (cap - floor)
    price = cap - give if side == Side.BID else floor + give
    return int(min(max(round(price), floor), cap))


def make_orders(member_id: str, pos: Position, config: MarketConfig, now_ms: int,
                daily_budget_milli_minor: int | None = None, alpha: float = 0.5) -> list[Order]:
    """Orders for every interval whose gate is still open at now_ms (ts_ms = now_ms)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError("alpha must be within 0..1")
    budget = daily_budget_milli_minor
    orders = []
    for start, net, spread in zip(pos.interval_start_ms.tolist(), pos.net_wh.tolist(),
                                  pos.spread_wh.tolist()):
        if now_ms > start - config.gate_closure_lead_ms:
            continue
        side = Side.BID if net > 0 else Side.OFFER
        energy_wh = int(np.floor(abs(net)))
        price = limit_price(side, confidence(net, spread), config, alpha)
        if side == Side.BID and budget is not None:
            if price > 0:
                energy_wh = min(energy_wh, budget // price)
            budget -= energy_wh * price
        if energy_wh < 1:
            continue
        orders.append(Order(f"{member_id}:{start}:{side.value}", member_id, side, energy_wh, price,
                            now_ms, start))
    return orders
