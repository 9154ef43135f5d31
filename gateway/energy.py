"""Settlement-interval arithmetic: integer Wh, intervals aligned to the hour in UTC.

A node reports cumulative counters (`energy_in_wh`, `energy_out_wh`). The energy of an interval
is the counter's increase inside it. Between two readings the counter is assumed to rise
linearly, so a delta whose readings straddle a boundary is shared between the intervals by the
time each one covers, in whole Wh by largest remainder: the parts always add up to the delta
exactly, so no Wh is created or lost by the split.
"""
from __future__ import annotations

MINUTE_MS = 60_000


def interval_start(ts_ms: int, interval_ms: int) -> int:
    """Start of the interval holding ts_ms. Unix time is a whole number of hours since the epoch,
    so floor division aligns every interval length that divides an hour to the hour."""
    return ts_ms - ts_ms % interval_ms


def _one_interval(start_ms: int, end_ms: int, interval_ms: int) -> int | None:
    """The start of the interval that owns all of (start_ms, end_ms], or None when it spans several."""
    # The interval that *ends* at a boundary owns a reading taken on it: step back 1 ms.
    last = interval_start(end_ms - 1, interval_ms)
    if end_ms <= start_ms or interval_start(start_ms, interval_ms) == last:
        return last
    return None


def split_energy(start_ms: int, end_ms: int, energy_wh: int, interval_ms: int) -> list[tuple[int, int]]:
    """Share `energy_wh`, accumulated over (start_ms, end_ms], among the intervals it spans.

    Returns [(interval_start_ms, wh), ...] in time order, leaving out zero parts; the wh add up to
    `energy_wh`. A reading at exactly a boundary belongs to the interval that ends there.
    """
    if energy_wh == 0:
        return []
    single = _one_interval(start_ms, end_ms, interval_ms)
    if single is not None:
        return [(single, energy_wh)]
    spans = []
    t = start_ms
    while t < end_ms:
        begin = interval_start(t, interval_ms)
        stop = min(begin + interval_ms, end_ms)
        spans.append((begin, stop - t))
        t = stop
    total_ms = end_ms - start_ms
    shares = [(begin, energy_wh * ms // total_ms, energy_wh * ms % total_ms) for begin, ms in spans]
    left = energy_wh - sum(wh for _, wh, _ in shares)
    # Largest remainder first; ties go to the later interval, nearer the reading that proved them.
    order = sorted(range(len(shares)), key=lambda i: (shares[i][2], i), reverse=True)
    bonus = set(order[:left])
    return [(begin, wh + (i in bonus)) for i, (begin, wh, _) in enumerate(shares) if wh + (i in bonus)]


def split_energies(start_ms: int, end_ms: int, import_wh: int, export_wh: int,
                   interval_ms: int) -> list[tuple[int, int, int]]:
    """split_energy of a channel's import and export deltas together: [(interval_start_ms,
    import_wh, export_wh), ...] in time order, intervals where both are zero left out."""
    single = _one_interval(start_ms, end_ms, interval_ms)
    if single is not None:  # the usual case, readings seconds apart: nothing to split
        return [(single, import_wh, export_wh)] if import_wh or export_wh else []
    parts: dict[int, list[int]] = {}
    for i, delta in enumerate((import_wh, export_wh)):
        for start, wh in split_energy(start_ms, end_ms, delta, interval_ms):
            parts.setdefault(start, [0, 0])[i] += wh
    return [(start, imp, exp) for start, (imp, exp) in sorted(parts.items())]
