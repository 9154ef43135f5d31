"""Blocks of metered days and the day-ahead samples cut from them; the shipped held-out set.

A block is a run of whole local days of one household's load and PV. Each target day with a full
week before it inside the block becomes one sample: that week's history, the clear-sky irradiance,
the calendar, and the day's actual values (only ever used as the target).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .features import HISTORY_DAYS, HISTORY_SLOTS, SLOTS_PER_DAY
from .weather import DAY_MS, SLOT_MS, Site, clearsky_ghi_w_m2

HELDOUT_PATH = Path(__file__).parent / "data" / "heldout.npz"


def calendar(day_start_ms: np.ndarray, utc_offset_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weekday (0 = Monday) and day of year (1..366) of local days starting at day_start_ms."""
    local_day = (np.asarray(day_start_ms, dtype=np.int64) + np.asarray(utc_offset_ms)) // DAY_MS
    dates = local_day.astype("datetime64[D]")
    weekday = (local_day + 3) % 7  # 1970-01-01 was a Thursday
    day_of_year = (dates - dates.astype("datetime64[Y]")).astype(np.int64) + 1
    return weekday.astype(np.int64), day_of_year


@dataclass
class Blocks:
    household_id: list[str]
    site: list[Site]
    start_ms: np.ndarray  # [K] UTC ms of each block's first local midnight
    load_w: np.ndarray    # [K, days*96]
    pv_w: np.ndarray      # [K, days*96]
    ghi_forecast_w_m2: np.ndarray | None = None  # [K, days*96] the day-ahead GHI forecast

    @property
    def days(self) -> int:
        return self.load_w.shape[1] // SLOTS_PER_DAY


@dataclass
class Samples:
    load_hist_w: np.ndarray   # [N, 672]
    pv_hist_w: np.ndarray     # [N, 672]
    clearsky_w_m2: np.ndarray  # [N, 768]
    weekday: np.ndarray       # [N]
    day_of_year: np.ndarray   # [N]
    ghi_forecast_w_m2: np.ndarray  # [N, 96] day-ahead GHI forecast; NaN where there is none
    load_w: np.ndarray        # [N, 96] actual (target)
    pv_w: np.ndarray          # [N, 96] actual (target)
    block: np.ndarray         # [N] index into the blocks
    day_start_ms: np.ndarray  # [N]


def make_samples(blocks: Blocks, target_days: list[np.ndarray] | None = None) -> Samples:
    """Samples for the given day indices of each block (default: every day after the first week)."""
    rows = {k: [] for k in Samples.__dataclass_fields__}
    clearsky_cache: dict[tuple, np.ndarray] = {}
    for k in range(len(blocks.household_id)):
        site = blocks.site[k]
        key = (site, int(blocks.start_ms[k]), blocks.days)
        if key not in clearsky_cache:
            clearsky_cache[key] = clearsky_ghi_w_m2(int(blocks.start_ms[k]),
                                                    blocks.days * SLOTS_PER_DAY, site)
        cs = clearsky_cache[key]
        days = (np.arange(HISTORY_DAYS, blocks.days) if target_days is None
                else np.asarray(target_days[k], dtype=np.int64))
        if days.size == 0:
            continue
        start = days * SLOTS_PER_DAY
        hist_idx = start[:, None] - HISTORY_SLOTS + np.arange(HISTORY_SLOTS)
        day_idx = start[:, None] + np.arange(SLOTS_PER_DAY)
        cs_idx = start[:, None] - HISTORY_SLOTS + np.arange(HISTORY_SLOTS + SLOTS_PER_DAY)
        day_start_ms = int(blocks.start_ms[k]) + days * DAY_MS
        weekday, doy = calendar(day_start_ms, site.utc_offset_ms)
        rows["load_hist_w"].append(blocks.load_w[k][hist_idx])
        rows["pv_hist_w"].append(blocks.pv_w[k][hist_idx])
        rows["clearsky_w_m2"].append(cs[cs_idx])
        rows["weekday"].append(weekday)
        rows["day_of_year"].append(doy)
        rows["ghi_forecast_w_m2"].append(
            np.full(day_idx.shape, np.nan) if blocks.ghi_forecast_w_m2 is None
            else blocks.ghi_forecast_w_m2[k][day_idx])
        rows["load_w"].append(blocks.load_w[k][day_idx])
        rows["pv_w"].append(blocks.pv_w[k][day_idx])
        rows["block"].append(np.full(days.size, k))
        rows["day_start_ms"].append(day_start_ms)
    return Samples(**{k: np.concatenate(v).astype(np.float64 if k.endswith(("_w", "_m2"))
                                                   else np.int64) for k, v in rows.items()})


def save_blocks(blocks: Blocks, path: Path) -> None:
    """Stored as whole watts (uint16 holds up to 65 kW) to keep the shipped held-out set small."""
    sites = sorted(set(blocks.site), key=lambda s: s.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        household_id=np.array(blocks.household_id),
        site_index=np.array([sites.index(s) for s in blocks.site]),
        site_name=np.array([s.name for s in sites]),
        site_geo=np.array([[s.latitude_deg, s.longitude_deg, s.utc_offset_h] for s in sites]),
        start_ms=np.asarray(blocks.start_ms, dtype=np.int64),
        load_w=np.clip(np.rint(blocks.load_w), 0, 65535).astype(np.uint16),
        pv_w=np.clip(np.rint(blocks.pv_w), 0, 65535).astype(np.uint16),
        ghi_forecast_w_m2=np.clip(np.rint(blocks.ghi_forecast_w_m2), 0, 65535).astype(np.uint16),
    )


def load_blocks(path: Path = HELDOUT_PATH) -> Blocks:
    with np.load(path) as z:
        sites = [Site(str(n), float(g[0]), float(g[1]), float(g[2]))
                 for n, g in zip(z["site_name"], z["site_geo"])]
        return Blocks([str(h) for h in z["household_id"]], [sites[i] for i in z["site_index"]],
                      z["start_ms"].astype(np.int64), z["load_w"].astype(np.float64),
                      z["pv_w"].astype(np.float64), z["ghi_forecast_w_m2"].astype(np.float64))


def slot_start_ms(day_start_ms: int) -> np.ndarray:
    return day_start_ms + SLOT_MS * np.arange(SLOTS_PER_DAY, dtype=np.int64)
