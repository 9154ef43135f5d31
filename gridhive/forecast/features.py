"""Model inputs for one day-ahead forecast: pure numpy, the same code for training and the gateway.

A forecast is issued at local midnight for the 96 intervals of the coming day, from the last 7 days
of the household's own metered load and PV, the calendar, and the clear-sky irradiance of the site.
Every input is known at issue time; none contains the forecast day's actual values.

The weather input is tomorrow's forecast clearness index per interval (forecast GHI over clear-sky
GHI). Two sources, flagged to the model by `has_weather_forecast`:
- a day-ahead GHI forecast handed to the gateway (in the dataset: the NWP-like synthetic forecast
  of weather.nwp_like_clearness, i.e. the actual irradiance with forecast-like error);
- without one, a persistence proxy: clear-sky times yesterday's clearness index, the index being
  yesterday's PV energy over the household's 7-day PV envelope (the best output seen at each time
  of day, which captures the array's size, orientation and shading).
The PV proxy input is then the envelope, shifted by the change in the sun's clear-sky irradiance
between the last week and tomorrow, times that clearness.

Series are scaled per household (load by its 7-day mean, PV by its 7-day peak), so one model serves
homes of any size; the runtime multiplies the outputs back.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

SLOTS_PER_DAY = 96
HISTORY_DAYS = 7
HISTORY_SLOTS = HISTORY_DAYS * SLOTS_PER_DAY
MIN_LOAD_SCALE_W = 50.0
MIN_PV_SCALE_W = 20.0  # a 7-day peak below this means the home has no PV (or it is broken)
CLEARSKY_REF_W_M2 = 1000.0

LOAD_FEATURES = (
    "lag_1d", "lag_7d", "mean_7d", "mean_7d_smooth", "median_7d_smooth", "lag_1d_smooth",
    "lag_7d_smooth", "std_7d_smooth", "same_daytype_mean_smooth", "day_mean_lag_1d",
    "day_mean_lag_7d", "last_2h_mean", "log_scale", "slot_sin", "slot_cos", "slot_sin2",
    "slot_cos2", "weekend", "weekend_lag_1d", "doy_sin", "doy_cos",
)
PV_FEATURES = (
    "lag_1d", "lag_7d", "mean_7d", "envelope_7d", "clearsky_pv", "clearsky_ghi", "clearsky_ratio",
    "clearness_1d", "clearness_2d", "clearness_3d", "clearness_7d_mean", "clearness_1d_pm",
    "forecast_clearness", "forecast_clearness_day", "forecast_pv_proxy", "forecast_ghi",
    "has_weather_forecast", "slot_sin", "slot_cos", "doy_sin", "doy_cos",
)


class Features(NamedTuple):
    load_x: np.ndarray      # [B, 96, len(LOAD_FEATURES)] float32
    pv_x: np.ndarray        # [B, 96, len(PV_FEATURES)] float32
    load_scale_w: np.ndarray  # [B]
    pv_scale_w: np.ndarray    # [B]; 0 where the home has no PV
    daylight: np.ndarray    # [B, 96] bool: clear-sky irradiance > 0


def fill_gaps(history: np.ndarray) -> np.ndarray:
    """Replace missing readings (NaN) by the mean of the same interval on the other days, else 0."""
    h = np.asarray(history, dtype=np.float64).reshape(-1, HISTORY_DAYS, SLOTS_PER_DAY)
    if not np.isnan(h).any():
        return h.reshape(-1, HISTORY_SLOTS)
    missing = np.isnan(h)
    seen = (~missing).sum(axis=1, keepdims=True)
    slot_mean = np.where(missing, 0.0, h).sum(axis=1, keepdims=True) / np.maximum(seen, 1)
    return np.where(missing, slot_mean, h).reshape(-1, HISTORY_SLOTS)


def _smooth(x: np.ndarray, half_width: int) -> np.ndarray:
    """Mean over neighbouring intervals (last axis, wrapping around midnight): habits jitter."""
    acc = np.zeros_like(x)
    for k in range(-half_width, half_width + 1):
        acc += np.roll(x, k, axis=-1)
    return acc / (2 * half_width + 1)


def _running_max(x: np.ndarray, half_width: int) -> np.ndarray:
    acc = x.copy()
    for k in range(1, half_width + 1):
        acc = np.maximum(acc, np.maximum(np.roll(x, k, axis=-1), np.roll(x, -k, axis=-1)))
    return acc


def _calendar(weekday: np.ndarray, day_of_year: np.ndarray, batch: int):
    slot_angle = 2 * np.pi * (np.arange(SLOTS_PER_DAY) + 0.5) / SLOTS_PER_DAY
    slot = np.broadcast_to(slot_angle, (batch, SLOTS_PER_DAY))
    doy_angle = 2 * np.pi * (np.asarray(day_of_year, dtype=np.float64) - 0.5) / 365.25
    weekend = (np.asarray(weekday) >= 5).astype(np.float64)
    weekend_prev = (((np.asarray(weekday) - 1) % 7) >= 5).astype(np.float64)
    return slot, doy_angle, weekend, weekend_prev


def build_features(load_hist_w: np.ndarray, pv_hist_w: np.ndarray, clearsky_w_m2: np.ndarray,
                   weekday: np.ndarray, day_of_year: np.ndarray,
                   ghi_forecast_w_m2: np.ndarray | None = None) -> Features:
    """Inputs for B day-ahead forecasts.

    load_hist_w, pv_hist_w: [B, 672] the last 7 days before the forecast day (NaN = missing);
    clearsky_w_m2: [B, 768] clear-sky GHI for those 7 days and then the forecast day;
    weekday: [B] of the forecast day (0 = Monday); day_of_year: [B] 1..366;
    ghi_forecast_w_m2: [B, 96] day-ahead GHI forecast for the day, or None / a row of NaN where
    there is none (then the persistence proxy stands in).
    """
    load_hist_w = fill_gaps(np.atleast_2d(load_hist_w))
    pv_hist_w = fill_gaps(np.atleast_2d(pv_hist_w))
    batch = load_hist_w.shape[0]
    cs = np.asarray(clearsky_w_m2, dtype=np.float64).reshape(batch, HISTORY_DAYS + 1,
                                                               SLOTS_PER_DAY)
    slot, doy_angle, weekend, weekend_prev = _calendar(weekday, day_of_year, batch)

    def per_day(v):  # a [B] value broadcast to every interval of the day
        return np.broadcast_to(np.asarray(v, dtype=np.float64)[:, None], (batch, SLOTS_PER_DAY))

    # load, scaled by the household's 7-day mean
    load_scale = np.maximum(load_hist_w.mean(axis=1), MIN_LOAD_SCALE_W)
    h = (load_hist_w / load_scale[:, None]).reshape(batch, HISTORY_DAYS, SLOTS_PER_DAY)
    hs = _smooth(h, 2)
    hist_weekday = (np.asarray(weekday)[:, None] - HISTORY_DAYS + np.arange(HISTORY_DAYS)) % 7
    same_type = (hist_weekday >= 5) == (np.asarray(weekday)[:, None] >= 5)
    same_type_mean = (hs * same_type[:, :, None]).sum(axis=1) / same_type.sum(axis=1)[:, None]
    load_x = np.stack([
        h[:, -1], h[:, 0], h.mean(axis=1), hs.mean(axis=1), np.median(hs, axis=1), hs[:, -1],
        hs[:, 0], hs.std(axis=1), same_type_mean,
        per_day(h[:, -1].mean(axis=1)), per_day(h[:, 0].mean(axis=1)),
        per_day(h[:, -1, -8:].mean(axis=1)), per_day(np.log(load_scale / 500.0)),
        np.sin(slot), np.cos(slot), np.sin(2 * slot), np.cos(2 * slot),
        per_day(weekend), per_day(weekend_prev), per_day(np.sin(doy_angle)),
        per_day(np.cos(doy_angle)),
    ], axis=-1)

    # PV, scaled by the household's 7-day peak
    peak = pv_hist_w.max(axis=1)
    has_pv = peak >= MIN_PV_SCALE_W
    pv_scale = np.where(has_pv, peak, 0.0)
    p = (pv_hist_w / np.maximum(peak, MIN_PV_SCALE_W)[:, None]).reshape(batch, HISTORY_DAYS,
                                                                        SLOTS_PER_DAY)
    cs_hist, cs_day = cs[:, :HISTORY_DAYS] / CLEARSKY_REF_W_M2, cs[:, -1] / CLEARSKY_REF_W_M2
    envelope = _running_max(p.max(axis=1), 1)
    cs_hist_mean = cs_hist.mean(axis=1)
    ratio = np.where(cs_hist_mean > 0.01, cs_day / np.maximum(cs_hist_mean, 0.01),
                     (cs_day > 0).astype(np.float64))
    ratio = np.clip(ratio, 0.0, 3.0)
    clearsky_pv = envelope * ratio
    envelope_energy = np.maximum(envelope.sum(axis=1), 1e-6)
    clearness = np.clip(p.sum(axis=2) / envelope_energy[:, None], 0.0, 1.5)  # [B, 7 days]
    pm_energy = np.maximum(envelope[:, SLOTS_PER_DAY // 2:].sum(axis=1), 1e-6)
    clearness_pm = np.clip(p[:, -1, SLOTS_PER_DAY // 2:].sum(axis=1) / pm_energy, 0.0, 1.5)
    fc_clearness, has_fc = _forecast_clearness(ghi_forecast_w_m2, cs_day, clearness[:, -1])
    fc_day = (fc_clearness * cs_day).sum(axis=1) / np.maximum(cs_day.sum(axis=1), 1e-6)
    pv_x = np.stack([
        p[:, -1], p[:, 0], p.mean(axis=1), envelope, clearsky_pv, cs_day, ratio,
        per_day(clearness[:, -1]), per_day(clearness[:, -2]), per_day(clearness[:, -3]),
        per_day(clearness.mean(axis=1)), per_day(clearness_pm),
        fc_clearness, per_day(fc_day), clearsky_pv * fc_clearness, cs_day * fc_clearness,
        per_day(has_fc), np.sin(slot), np.cos(slot), per_day(np.sin(doy_angle)),
        per_day(np.cos(doy_angle)),
    ], axis=-1)
    return Features(load_x.astype(np.float32), pv_x.astype(np.float32), load_scale, pv_scale,
                    cs_day > 0)


def _forecast_clearness(ghi_forecast_w_m2, cs_day: np.ndarray, clearness_1d: np.ndarray):
    """Per-interval forecast clearness [B, 96] and whether it came from a weather forecast [B]."""
    batch = cs_day.shape[0]
    persistence = np.broadcast_to(clearness_1d[:, None], (batch, SLOTS_PER_DAY))
    if ghi_forecast_w_m2 is None:
        return persistence, np.zeros(batch)
    fc = np.asarray(ghi_forecast_w_m2, dtype=np.float64).reshape(batch, SLOTS_PER_DAY)
    has_fc = ~np.isnan(fc).any(axis=1)
    cs_w = cs_day * CLEARSKY_REF_W_M2
    kt = np.where(cs_w > 1.0, np.nan_to_num(fc) / np.maximum(cs_w, 1.0), 0.0)
    return (np.where(has_fc[:, None], np.clip(kt, 0.0, 1.3), persistence),
            has_fc.astype(np.float64))


def seasonal_naive(history_w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two seasonal-naive forecasts from [B, >=672] history: same interval yesterday and
    same interval one week ago."""
    h = np.atleast_2d(history_w)
    return h[:, -SLOTS_PER_DAY:], h[:, -HISTORY_SLOTS:-HISTORY_SLOTS + SLOTS_PER_DAY]
