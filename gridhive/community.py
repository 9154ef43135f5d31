"""One market day of a community, from forecast to settlement, on the shipped held-out households.

Each home is one of the held-out households shipped with the forecaster (gridhive/forecast/data):
its trading agent forecasts the home's day with the LiteRT model from the week before, schedules
flexible loads and prices bids and offers; the market clears every 15-minute interval; then the
day's actual metering (the household's recorded load and PV, plus the flexible loads its agent
ran) is settled against the cleared trades. The result is the papers' headline
figure: each home's energy cost with the market against the same home without it.

The households come from different sites and weeks. Each forecasts and plans on its own real day
(so its inputs are right); the orders are then placed on one shared market day, slot by slot.
"""
from dataclasses import dataclass

import numpy as np

from gridhive.agent import TradingAgent
from gridhive.forecast import Forecaster, LiteModel
from gridhive.forecast.samples import load_blocks
from gridhive.forecast.weather import DAY_MS, SLOT_MS
from gridhive.market import (Community, Feeder, MarketConfig, Member, clear, community_report,
                             settle_interval, statements)

SLOTS_PER_DAY = 96
HISTORY_DAYS = 7
# Quartierstrom (CONTEXT.md): feed-in 4 Rp/kWh, utility 20.75 Rp/kWh (whole minor units here).
DEMO_MARKET = MarketConfig(feed_in_minor_per_kwh=4, retail_minor_per_kwh=21, mechanism="uniform")
MARKET_DAY_MS = 1_767_225_600_000  # 2026-01-01T00:00Z: the shared market day (UTC)
# The papers' four-house case study: weekly cost reductions from P2P trading (CONTEXT.md item 6).
PAPERS_PROSUMERS_PCT = (7.60, 25.41)
PAPERS_CONSUMERS_PCT = (5.40, 17.63)


@dataclass(frozen=True)
class HomeDay:
    member_id: str
    household: str
    prosumer: bool
    forecast_method: str
    bids: int
    offers: int
    flex_wh: int            # the flexible loads its agent scheduled and ran (part of its metering)
    bought_wh: int
    sold_wh: int
    grid_import_wh: int
    grid_export_wh: int
    cost_milli_minor: int
    reference_cost_milli_minor: int
    reduction_bp: int | None


@dataclass(frozen=True)
class CommunityDay:
    homes: tuple[HomeDay, ...]
    traded_wh: int
    intervals_with_trades: int
    mean_price_minor_per_kwh: float | None
    prosumers_bp: int | None
    consumers_bp: int | None


def _wh(power_w: np.ndarray) -> np.ndarray:
    """Energy per 15-min slot, whole Wh."""
    return np.rint(power_w * SLOT_MS / 3_600_000).astype(np.int64)


def simulate_day(member_ids: list[str], config: MarketConfig = DEMO_MARKET) -> CommunityDay:
    blocks = load_blocks()
    per_household = len(blocks.household_id) // len(set(blocks.household_id))
    model = LiteModel()
    day = HISTORY_DAYS  # the first day with a full week of history inside a block
    plans, metered, has_pv = {}, {}, {}
    for i, member_id in enumerate(member_ids):
        # Homes cycle through the households; a household used again brings a different week.
        k = (i * per_household + i // len(set(blocks.household_id))) % len(blocks.household_id)
        history = slice((day - HISTORY_DAYS) * SLOTS_PER_DAY, day * SLOTS_PER_DAY)
        today = slice(day * SLOTS_PER_DAY, (day + 1) * SLOTS_PER_DAY)
        own_day_ms = int(blocks.start_ms[k]) + day * DAY_MS
        agent = TradingAgent(member_id, Forecaster(blocks.site[k], model=model), config,
                             relay=lambda relay_id, on: None)
        plan = agent.plan_day(own_day_ms, blocks.load_w[k, history], blocks.pv_w[k, history],
                              now_ms=own_day_ms - 3_600_000)
        shift = MARKET_DAY_MS - own_day_ms
        orders = [o._replace(interval_start_ms=o.interval_start_ms + shift, ts_ms=o.ts_ms + shift)
                  for o in plan.orders]
        plans[member_id] = (blocks.household_id[k], plan, orders)
        has_pv[member_id] = bool(blocks.pv_w[k].any())
        # What the meter will show: export-positive net energy per slot (the settlement convention).
        # The flexible loads the agent runs (its relays switch them on) are part of the home's
        # consumption: it bid for them, and without them its bids would be for energy never used.
        metered[member_id] = _wh(blocks.pv_w[k, today]) - _wh(blocks.load_w[k, today] + plan.flex_w)

    community = Community(tuple(Member(m, "f1", has_generation=has_pv[m]) for m in member_ids),
                          (Feeder("f1"),))
    settlements, traded_wh, priced, trading_slots = [], 0, [], 0
    for slot in range(SLOTS_PER_DAY):
        start_ms = MARKET_DAY_MS + slot * SLOT_MS
        book = [o for _, _, orders in plans.values() for o in orders if o.interval_start_ms == start_ms]
        result = clear(book, config, community, start_ms)
        if result.trades:
            trading_slots += 1
            traded_wh += result.energy_wh
            priced += [(t.energy_wh, t.price_minor_per_kwh) for t in result.trades]
        settlements.append(settle_interval(result, {m: int(metered[m][slot]) for m in member_ids},
                                           config, community))
    month = statements(settlements, "month")
    report = community_report(month, community, month[0].period)
    homes = []
    for s in month:
        household, plan, orders = plans[s.member_id]
        homes.append(HomeDay(
            s.member_id, household, community.by_id[s.member_id].has_generation, plan.forecast.method,
            sum(o.side == "bid" for o in orders), sum(o.side == "offer" for o in orders),
            int(_wh(plan.flex_w).sum()),
            s.bought_wh, s.sold_wh, s.grid_import_wh, s.grid_export_wh, s.cost_milli_minor,
            s.reference_cost_milli_minor, s.reduction_bp))
    volume = sum(e for e, _ in priced)
    return CommunityDay(tuple(homes), traded_wh, trading_slots,
                        sum(e * p for e, p in priced) / volume if volume else None,
                        report.prosumers.reduction_bp, report.consumers.reduction_bp)
