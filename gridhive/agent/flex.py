"""Flexible-load scheduling: which 15-min intervals each shiftable appliance runs in. Pure.

Each appliance has a daily window (local time) and a running time it needs inside every window
(CONTEXT.md's table). The scheduler gives each window instance exactly its required intervals,
all inside the window, choosing the cheapest: energy covered by the home's own forecast surplus
costs what it would have earned exported (feed-in or the expected offer price), the rest costs the
import price. A homeowner's override wins: intervals forced off are never chosen, intervals forced
on count toward the required time, and the relay is never commanded while an override holds.
Runs may be split into separate 15-min pieces.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SLOT_MIN = 15
SLOT_MS = SLOT_MIN * 60_000
MIN_PER_DAY = 1440


class ScheduleError(ValueError):
    """An appliance or override is invalid; `field` names the offending field."""

    def __init__(self, field: str, reason: str, subject: str = ""):
        self.field = field
        super().__init__(f"{subject + ': ' if subject else ''}{field}: {reason}")


@dataclass(frozen=True)
class Appliance:
    name: str
    power_w: int
    window_start_min: int  # local minutes after midnight
    window_end_min: int    # exclusive; at or before the start means the window ends next day
    required_min: int      # running time needed in every window
    relay_id: str

    def __post_init__(self):
        s = f"appliance {self.name}"
        if not self.name or not self.relay_id:
            raise ScheduleError("name" if not self.name else "relay_id", "must not be empty", s)
        if type(self.power_w) is not int or self.power_w <= 0:
            raise ScheduleError("power_w", "must be a positive integer", s)
        for f in ("window_start_min", "window_end_min", "required_min"):
            v = getattr(self, f)
            if type(v) is not int or not 0 <= v <= MIN_PER_DAY or v % SLOT_MIN:
                raise ScheduleError(f, f"must be a multiple of {SLOT_MIN} in 0..{MIN_PER_DAY}", s)
        if self.required_min > self.window_min:
            raise ScheduleError("required_min", f"exceeds the {self.window_min}-min window", s)

    @property
    def window_min(self) -> int:
        length = (self.window_end_min - self.window_start_min) % MIN_PER_DAY
        return length or MIN_PER_DAY

    @property
    def required_slots(self) -> int:
        return self.required_min // SLOT_MIN

    @property
    def energy_per_slot_wh(self) -> float:
        return self.power_w * SLOT_MIN / 60.0


# CONTEXT.md's flexible appliances. The table gives no running time for the A/C; 3 h of its
# 5-h evening window is our assumption.
DEFAULT_APPLIANCES = (
    Appliance("ev", 3650, 19 * 60, 6 * 60, 6 * 60, "relay-ev"),
    Appliance("water_heater", 1500, 6 * 60, 23 * 60, 3 * 60, "relay-water-heater"),
    Appliance("pool_pump", 2000, 12 * 60, 21 * 60, 8 * 60, "relay-pool-pump"),
    Appliance("ac", 1000, 19 * 60, 24 * 60, 3 * 60, "relay-ac"),
)


@dataclass(frozen=True)
class Override:
    """The homeowner switched an appliance on or off for [start_ms, end_ms)."""

    appliance: str
    on: bool
    start_ms: int
    end_ms: int

    def covers(self, ts_ms: int) -> bool:
        return self.start_ms <= ts_ms < self.end_ms


@dataclass(frozen=True)
class WindowPlan:
    appliance: str
    window_start_ms: int
    window_end_ms: int
    on_slot_ms: tuple[int, ...]  # starts of the intervals it runs in (forced-on ones included)
    shortfall_slots: int         # required intervals that could not be given (overrides)


def window_for_day(app: Appliance, day_start_ms: int) -> tuple[int, int]:
    """The window that opens on the local day starting at day_start_ms, as [start, end) in ms."""
    start = day_start_ms + app.window_start_min * 60_000
    return start, start + app.window_min * 60_000


def schedule(appliances, day_start_ms: int, horizon_start_ms: int, surplus_wh: np.ndarray,
             import_price: np.ndarray, export_price: np.ndarray,
             overrides=()) -> list[WindowPlan]:
    """Plan the windows that open on the day starting at day_start_ms.

    surplus_wh, import_price, export_price: per 15-min interval of the horizon starting at
    horizon_start_ms, which must cover those windows (a day-ahead forecast plus the next day).
    Larger appliances are placed first, so they get the surplus when there is not enough for all.
    """
    surplus = np.maximum(np.asarray(surplus_wh, dtype=np.float64), 0.0).copy()
    n = surplus.size
    plans = []
    for app in sorted(appliances, key=lambda a: (-a.power_w, a.name)):
        start_ms, end_ms = window_for_day(app, day_start_ms)
        first = (start_ms - horizon_start_ms) // SLOT_MS
        last = (end_ms - horizon_start_ms) // SLOT_MS
        if first < 0 or last > n:
            raise ScheduleError("horizon", f"does not cover {app.name}'s window")
        slots = np.arange(first, last)
        slot_ms = horizon_start_ms + slots * SLOT_MS
        forced = {}
        for o in overrides:
            if o.appliance == app.name:
                for i, ts in zip(slots, slot_ms):
                    if o.covers(int(ts)):
                        forced[int(i)] = o.on
        forced_on = [i for i in slots if forced.get(int(i)) is True]
        free = np.array([i for i in slots if int(i) not in forced], dtype=np.int64)
        need = max(app.required_slots - len(forced_on), 0)
        e = app.energy_per_slot_wh
        own = np.minimum(surplus[free], e)
        cost = own * export_price[free] + (e - own) * import_price[free]
        chosen = free[np.lexsort((free, cost))[:need]]  # cheapest, then earliest
        surplus[chosen] = np.maximum(surplus[chosen] - e, 0.0)
        on = sorted(int(i) for i in np.concatenate([np.array(forced_on, dtype=np.int64), chosen]))
        plans.append(WindowPlan(app.name, int(start_ms), int(end_ms),
                                tuple(horizon_start_ms + i * SLOT_MS for i in on),
                                max(need - len(chosen), 0)))
    return plans
