"""Cross-check: the utility meter's interval energy against the sum of the node circuits. Pure functions.

The meter's interval energy is the difference of its kWh counters at the interval's two boundaries,
each interpolated linearly between the readings just before and just after it. The comparison is on
net energy (import − export): circuits of one home offset each other within an instant (PV exporting
on one clamp while the heat pump imports on another), so only the net is additive at the meter.
"""
from __future__ import annotations

from dataclasses import dataclass

INTERVAL_MS = 15 * 60 * 1000


@dataclass(frozen=True)
class CounterSample:
    ts_ms: int
    import_wh: float
    export_wh: float


@dataclass(frozen=True)
class IntervalEnergy:
    start_ms: int
    interval_ms: int
    import_wh: int
    export_wh: int

    @property
    def net_wh(self):
        return self.import_wh - self.export_wh


@dataclass(frozen=True)
class CrossCheck:
    start_ms: int
    interval_ms: int
    meter_import_wh: int
    meter_export_wh: int
    circuits_import_wh: int
    circuits_export_wh: int
    discrepancy_wh: int               # meter net − circuits net (+: the meter saw more import)
    discrepancy_pct: float | None     # |discrepancy| as % of the meter's throughput (import + export)
    within_tolerance: bool


def counter_samples(readings):
    """CounterSamples from MeterReadings that carry both accepted counters (gaps are skipped)."""
    return [CounterSample(r.ts_ms, r.values["import_energy_wh"], r.values["export_energy_wh"])
            for r in readings
            if not r.gap and "import_energy_wh" in r.values and "export_energy_wh" in r.values]


def counters_at(samples, ts_ms, max_bracket_ms):
    """(import_wh, export_wh) interpolated at `ts_ms`, or None without samples close on both sides."""
    before = max((s for s in samples if s.ts_ms <= ts_ms), key=lambda s: s.ts_ms, default=None)
    after = min((s for s in samples if s.ts_ms >= ts_ms), key=lambda s: s.ts_ms, default=None)
    if before is None or after is None or after.ts_ms - before.ts_ms > max_bracket_ms:
        return None
    if after.ts_ms == before.ts_ms:
        return before.import_wh, before.export_wh
    f = (ts_ms - before.ts_ms) / (after.ts_ms - before.ts_ms)
    return (before.import_wh + f * (after.import_wh - before.import_wh),
            before.export_wh + f * (after.export_wh - before.export_wh))


def meter_interval_energy(samples, start_ms, interval_ms=INTERVAL_MS, max_bracket_ms=5 * 60 * 1000):
    """The meter's IntervalEnergy for [start_ms, start_ms + interval_ms), or None when a boundary has
    no readings within `max_bracket_ms` around it (a gap too long to interpolate across)."""
    start = counters_at(samples, start_ms, max_bracket_ms)
    end = counters_at(samples, start_ms + interval_ms, max_bracket_ms)
    if start is None or end is None:
        return None
    return IntervalEnergy(start_ms, interval_ms, round(end[0] - start[0]), round(end[1] - start[1]))


def cross_check(meter, circuits, tolerance_pct=5.0, tolerance_wh=20):
    """Compare the meter's IntervalEnergy with {circuit: (import_wh, export_wh)} of the same interval.

    Within tolerance when |discrepancy| ≤ max(tolerance_wh, tolerance_pct % of the meter's throughput);
    the absolute floor keeps a quiet interval (a few Wh) from failing on counter resolution.
    """
    circuits_import_wh = sum(int(i) for i, _ in circuits.values())
    circuits_export_wh = sum(int(e) for _, e in circuits.values())
    discrepancy_wh = meter.net_wh - (circuits_import_wh - circuits_export_wh)
    throughput_wh = meter.import_wh + meter.export_wh
    pct = abs(discrepancy_wh) * 100.0 / throughput_wh if throughput_wh > 0 else None
    return CrossCheck(meter.start_ms, meter.interval_ms, meter.import_wh, meter.export_wh,
                      circuits_import_wh, circuits_export_wh, discrepancy_wh, pct,
                      abs(discrepancy_wh) <= max(tolerance_wh, tolerance_pct / 100.0 * throughput_wh))


def check_due(end_ms, now_ms, meter_through_ms, circuits_through_ms, max_bracket_ms, circuits_wait_ms):
    """(due, circuits_complete) for the interval ending at `end_ms`: check it once both sides are final.

    The meter side is final with a reading at or after the end (it brackets the boundary), or once
    `max_bracket_ms` has passed (no later reading could: the meter side is a gap). The circuits are
    complete when every one has a reading at or after the end (`circuits_through_ms`, the oldest of
    their latest readings, None if one never reported); without that the check waits
    `circuits_wait_ms` for a node that is away, then goes ahead marked incomplete.
    """
    meter_final = (meter_through_ms is not None and meter_through_ms >= end_ms) or now_ms >= end_ms + max_bracket_ms
    complete = circuits_through_ms is not None and circuits_through_ms >= end_ms
    return meter_final and (complete or now_ms >= end_ms + circuits_wait_ms), complete
