"""Checks that decide whether a decoded meter value is physically possible. Pure functions."""
from __future__ import annotations

import math

from .registers import LIMITS

COUNTERS = ("import_energy_wh", "export_energy_wh")
MS_PER_H = 3_600_000


def validate(values, quantities):
    """Split {name: value} into (accepted, {name: reason}); reasons: nan, inf, out_of_range."""
    accepted, rejected = {}, {}
    for name, value in values.items():
        if math.isnan(value):
            rejected[name] = "nan"
        elif math.isinf(value):
            rejected[name] = "inf"
        elif name in quantities and not LIMITS[quantities[name]][0] <= value <= LIMITS[quantities[name]][1]:
            rejected[name] = "out_of_range"
        else:
            accepted[name] = value
    return accepted, rejected


def check_counters(previous, values, ts_ms, max_power_w=LIMITS["power_w"][1]):
    """Reasons to refuse energy counters given the last accepted ones, {name: (value_wh, ts_ms)}.

    A counter never decreases, and it cannot grow faster than the largest possible power. The slack
    covers float32 quantisation (a kWh register at 100 MWh resolves ~8 Wh).
    """
    rejected = {}
    for name in COUNTERS:
        if name not in values or name not in previous:
            continue
        previous_wh, previous_ts_ms = previous[name]
        delta_wh = values[name] - previous_wh
        slack_wh = 10.0 + 1e-6 * abs(previous_wh)
        if delta_wh < -slack_wh:
            rejected[name] = "counter_decreased"
        elif delta_wh > max_power_w * max(ts_ms - previous_ts_ms, 0) / MS_PER_H + slack_wh:
            rejected[name] = "counter_jump"
    return rejected
