"""The household's trading agent: forecast -> flexible-load plan -> orders; relays on the clock.

Wiring is injected: `relay(relay_id, on)` switches a relay (the gateway's relay command path) and
the caller submits the returned orders to the market. Everything else is the pure cores in
flex.py and strategy.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from gridhive.forecast.runtime import Forecast, Forecaster
from gridhive.market import MarketConfig, Order

from .flex import DEFAULT_APPLIANCES, SLOT_MS, Appliance, Override, WindowPlan, schedule
from .strategy import make_orders, position

SLOTS_PER_DAY = 96


@dataclass(frozen=True)
class DayPlan:
    day_start_ms: int
    forecast: Forecast
    windows: tuple[WindowPlan, ...]
    flex_w: np.ndarray  # scheduled flexible load per 15-min interval of the day
    orders: tuple[Order, ...]


@dataclass
class TradingAgent:
    member_id: str
    forecaster: Forecaster
    config: MarketConfig
    relay: Callable[[str, bool], None]
    appliances: tuple[Appliance, ...] = DEFAULT_APPLIANCES
    daily_budget_milli_minor: int | None = None
    alpha: float = 0.5
    overrides: list[Override] = field(default_factory=list)
    on_slot_ms: dict[str, set[int]] = field(default_factory=dict)  # the plan, across days
    commanded: dict[str, bool] = field(default_factory=dict)
    last_plan: DayPlan | None = None

    def set_override(self, appliance: str, on: bool, start_ms: int, end_ms: int) -> None:
        """The homeowner's switch: the agent plans around it and never commands against it."""
        if appliance not in {a.name for a in self.appliances}:
            raise ValueError(f"unknown appliance {appliance!r}")
        self.overrides.append(Override(appliance, on, start_ms, end_ms))

    def plan_day(self, day_start_ms: int, load_hist_w, pv_hist_w, now_ms: int) -> DayPlan:
        """Forecast the day, schedule the windows that open on it, and price its intervals.

        Windows that run past midnight (the EV's) are planned over tomorrow's first hours too,
        using today's forecast for them (the day-ahead forecast does not reach further).
        """
        fc = self.forecaster.day_ahead(self.member_id, load_hist_w, pv_hist_w, day_start_ms)
        surplus_wh = np.tile(np.maximum(fc.pv_w - fc.load_w, 0.0) * SLOT_MS / 3_600_000, 2)
        import_price = np.full(2 * SLOTS_PER_DAY, float(self.config.retail_minor_per_kwh))
        export_price = np.full(2 * SLOTS_PER_DAY, float(self.config.feed_in_minor_per_kwh))
        self.overrides = [o for o in self.overrides if o.end_ms > now_ms]
        windows = schedule(self.appliances, day_start_ms, day_start_ms, surplus_wh, import_price,
                           export_price, self.overrides)
        for w in windows:  # a re-plan replaces the window's earlier plan
            slots = self.on_slot_ms.setdefault(w.appliance, set())
            slots.difference_update(range(w.window_start_ms, w.window_end_ms, SLOT_MS))
            slots.update(w.on_slot_ms)
        for slots in self.on_slot_ms.values():  # forget what is over
            slots.difference_update({t for t in slots if t < day_start_ms - SLOT_MS})
        slot_ms = day_start_ms + SLOT_MS * np.arange(SLOTS_PER_DAY, dtype=np.int64)
        flex_w = np.zeros(SLOTS_PER_DAY)
        for app in self.appliances:
            on = self.on_slot_ms.get(app.name, set())
            flex_w += app.power_w * np.isin(slot_ms, list(on))
        pos = position(day_start_ms, fc.load_w, fc.pv_w, fc.load_p90_w - fc.load_p10_w,
                       fc.pv_p90_w - fc.pv_p10_w, flex_w, self.config.interval_ms)
        orders = make_orders(self.member_id, pos, self.config, now_ms,
                             self.daily_budget_milli_minor, self.alpha)
        self.last_plan = DayPlan(day_start_ms, fc, tuple(windows), flex_w, tuple(orders))
        return self.last_plan

    def tick(self, now_ms: int) -> list[tuple[str, bool]]:
        """Switch relays to the plan for the interval containing now_ms; returns the commands
        sent. An appliance under a homeowner's override is left alone."""
        slot = now_ms - now_ms % SLOT_MS
        sent = []
        for app in self.appliances:
            if any(o.appliance == app.name and o.covers(now_ms) for o in self.overrides):
                self.commanded.pop(app.name, None)  # re-assert the plan once the override ends
                continue
            want = slot in self.on_slot_ms.get(app.name, ())
            if self.commanded.get(app.name) != want:
                self.relay(app.relay_id, want)
                self.commanded[app.name] = want
                sent.append((app.relay_id, want))
        return sent
