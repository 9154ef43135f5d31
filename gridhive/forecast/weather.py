"""Sites, weather and clear-sky irradiance.

Weather comes only from the typical-year files that pvlib ships (nothing is downloaded): two TMY3
stations and one TMY2 station. Their hourly records are turned into 15-min intervals by
interpolating the clearness index (not the irradiance, which would smear sunrise and sunset) and
adding seeded sub-hourly cloud variability. `clearsky_ghi_w_m2` is also what the gateway uses at run
time, so training and serving compute the clear-sky input the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

SLOT_MS = 900_000
SLOTS_PER_DAY = 96
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
# TMY files mix months of different years; the dataset lays them on one non-leap calendar year.
DATASET_YEAR = 2021
DAYS_PER_YEAR = 365
_YEAR_START_UTC_MS = 1_609_459_200_000  # 2021-01-01T00:00:00Z


@dataclass(frozen=True)
class Site:
    """Where a household is. Calendar features use local standard time (no daylight saving)."""

    name: str
    latitude_deg: float
    longitude_deg: float
    utc_offset_h: float

    @property
    def utc_offset_ms(self) -> int:
        return int(round(self.utc_offset_h * HOUR_MS))

    def local_midnight_ms(self, ts_ms: int) -> int:
        """Start (UTC ms) of the local-standard-time day containing ts_ms."""
        local_ms = ts_ms + self.utc_offset_ms
        return local_ms - local_ms % DAY_MS - self.utc_offset_ms


# name -> (file bundled in pvlib/data, reader)
WEATHER_FILES = {
    "greensboro": ("723170TYA.CSV", "tmy3"),
    "sand_point": ("703165TY.csv", "tmy3"),
    "miami": ("12839.tm2", "tmy2"),
}


@dataclass(frozen=True)
class Weather:
    """One site's year at 15-min resolution (interval means), local standard time from Jan 1."""

    site: Site
    start_ms: int          # UTC ms of the first interval
    ghi_w_m2: np.ndarray
    dni_w_m2: np.ndarray
    dhi_w_m2: np.ndarray
    temp_air_c: np.ndarray
    wind_speed_m_s: np.ndarray
    ghi_hourly_w_m2: np.ndarray  # the file's own hourly values, for the CREST lighting model
    dhi_hourly_w_m2: np.ndarray
    ghi_forecast_w_m2: np.ndarray  # synthetic day-ahead NWP-like forecast, see nwp_like_clearness


def _pvlib_data_dir() -> Path:
    import pvlib
    return Path(pvlib.__file__).parent / "data"


def _read_hourly(name: str):
    """The file's 8760 hourly rows in file order, plus the site. Values are means of the hour
    ending at each row's timestamp."""
    import pvlib
    filename, kind = WEATHER_FILES[name]
    path = _pvlib_data_dir() / filename
    if kind == "tmy3":
        df, meta = pvlib.iotools.read_tmy3(str(path), map_variables=True)
        cols = {"ghi": "ghi", "dni": "dni", "dhi": "dhi", "temp": "temp_air", "wind": "wind_speed"}
    else:
        df, meta = pvlib.iotools.read_tmy2(str(path))
        cols = {"ghi": "GHI", "dni": "DNI", "dhi": "DHI", "temp": "DryBulb", "wind": "Wspd"}
    site = Site(name, float(meta["latitude"]), float(meta["longitude"]), float(meta["TZ"]))
    values = {k: df[c].to_numpy(dtype=np.float64)[: DAYS_PER_YEAR * 24] for k, c in cols.items()}
    if kind == "tmy2":  # pvlib returns TMY2 temperature and wind speed in tenths
        values["temp"] = values["temp"] / 10.0
        values["wind"] = values["wind"] / 10.0
    return site, values


def site(name: str) -> Site:
    return _read_hourly(name)[0]


def solar_zenith_deg(ts_ms: np.ndarray, site_: Site) -> np.ndarray:
    import pandas as pd
    import pvlib
    times = pd.DatetimeIndex(np.asarray(ts_ms, dtype="int64") * 1_000_000, tz="UTC")
    pos = pvlib.solarposition.get_solarposition(times, site_.latitude_deg, site_.longitude_deg,
                                                method="nrel_numpy")
    return pos["apparent_zenith"].to_numpy()


def haurwitz_ghi_w_m2(zenith_deg: np.ndarray) -> np.ndarray:
    """Haurwitz clear-sky GHI (pvlib.clearsky.haurwitz's formula): sun angle only, no turbidity."""
    cos_z = np.cos(np.radians(np.asarray(zenith_deg, dtype=np.float64)))
    safe = np.where(cos_z > 0.0, cos_z, 1.0)
    return np.where(cos_z > 0.0, 1098.0 * cos_z * np.exp(-0.059 / safe), 0.0)


def clearsky_ghi_w_m2(start_ms: int, n_slots: int, site_: Site) -> np.ndarray:
    """Clear-sky GHI at each 15-min interval's midpoint, for the intervals starting at start_ms."""
    mid_ms = start_ms + SLOT_MS // 2 + SLOT_MS * np.arange(n_slots, dtype=np.int64)
    return haurwitz_ghi_w_m2(solar_zenith_deg(mid_ms, site_))


def load_weather(name: str, seed: int) -> Weather:
    """Upsample one bundled typical year to 15-min intervals, deterministically from seed."""
    import pvlib
    site_, hourly = _read_hourly(name)
    start_ms = _YEAR_START_UTC_MS - site_.utc_offset_ms
    n_hours = DAYS_PER_YEAR * 24
    n_slots = DAYS_PER_YEAR * SLOTS_PER_DAY
    # Hourly means sit at the middle of their hour (row t covers t-1h..t).
    hour_mid_ms = start_ms + HOUR_MS // 2 + HOUR_MS * np.arange(n_hours, dtype=np.int64)
    slot_mid_ms = start_ms + SLOT_MS // 2 + SLOT_MS * np.arange(n_slots, dtype=np.int64)
    cs_hour = haurwitz_ghi_w_m2(solar_zenith_deg(hour_mid_ms, site_))
    cs_slot = clearsky_ghi_w_m2(start_ms, n_slots, site_)
    ghi_hour = np.clip(hourly["ghi"], 0, None)
    daylight = cs_hour > 20.0
    kt_hour = np.where(daylight, ghi_hour / np.maximum(cs_hour, 1.0), np.nan)
    kt_hour = np.clip(kt_hour, 0.0, 1.3)
    ok = ~np.isnan(kt_hour)
    kt_slot = np.interp(slot_mid_ms, hour_mid_ms[ok], kt_hour[ok])
    # Sub-hourly cloud variability: strongest at intermediate clearness, none when clear/overcast.
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(n_slots).reshape(-1, 4)
    noise -= noise.mean(axis=1, keepdims=True)  # keep each hour's mean close to the file's
    sigma = 1.2 * kt_slot * np.clip(1.0 - kt_slot, 0.0, 1.0)
    kt_slot = np.clip(kt_slot * (1.0 + sigma * noise.reshape(-1)), 0.0, 1.3)
    ghi = kt_slot * cs_slot
    zenith = solar_zenith_deg(slot_mid_ms, site_)
    doy = 1 + np.arange(n_slots) // SLOTS_PER_DAY
    parts = pvlib.irradiance.erbs(ghi, zenith, doy)
    dni = np.nan_to_num(np.asarray(parts["dni"], dtype=np.float64))
    dhi = np.nan_to_num(np.asarray(parts["dhi"], dtype=np.float64))
    temp = np.interp(slot_mid_ms, hour_mid_ms, hourly["temp"])
    wind = np.interp(slot_mid_ms, hour_mid_ms, hourly["wind"])
    kt_forecast = nwp_like_clearness(kt_hour.reshape(DAYS_PER_YEAR, 24), rng)
    ok = ~np.isnan(kt_forecast)
    ghi_forecast = np.interp(slot_mid_ms, hour_mid_ms[ok], kt_forecast[ok]) * cs_slot
    return Weather(site_, int(start_ms), ghi, dni, dhi, temp, wind,
                   ghi_hourly_w_m2=ghi_hour, dhi_hourly_w_m2=np.clip(hourly["dhi"], 0, None),
                   ghi_forecast_w_m2=ghi_forecast)


# The day-ahead weather forecast a gateway would receive (from the controller, which can reach a
# weather service), simulated from the actual clearness with forecast-like error. Calibrated so
# that its hourly GHI RMSE is ~29 % of the mean at Greensboro and Miami and ~44 % at Sand Point,
# 28-48 % better than persistence: worse than the best day-ahead NWP forecasts, which Perez et al.
# (Solar Energy 94, 2013, 34 sites in the US, Canada and Europe) found ~50 % better.
NWP_SMOOTH_HOURS = 3         # NWP cannot place a cloud within the hour: a 3-h running mean
NWP_SHRINK = 0.85            # forecasts lean toward the climatological mean clearness
NWP_DAILY_ERROR_SIGMA = 0.15  # clearness error shared by the whole day (a misplaced front)
NWP_HOURLY_ERROR_SIGMA = 0.10  # and an hour-to-hour error, AR(1) ...
NWP_HOURLY_ERROR_RHO = 0.7     # ... with this lag-1 correlation


def nwp_like_clearness(kt_day_hour: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[days, 24] actual hourly clearness (NaN at night) -> forecast clearness, flat [days*24]."""
    days = kt_day_hour.shape[0]
    padded = np.pad(kt_day_hour, ((0, 0), (1, 1)), constant_values=np.nan)
    windows = np.stack([padded[:, i:i + 24] for i in range(NWP_SMOOTH_HOURS)])
    seen = (~np.isnan(windows)).sum(axis=0)
    smooth = np.where(seen > 0, np.nansum(windows, axis=0) / np.maximum(seen, 1), np.nan)
    smooth = np.where(np.isnan(kt_day_hour), np.nan, smooth)
    mean = np.nanmean(kt_day_hour)
    shocks = rng.standard_normal(days * 24)
    hourly = np.empty(days * 24)
    hourly[0] = shocks[0]
    keep = NWP_HOURLY_ERROR_RHO
    for t in range(1, days * 24):
        hourly[t] = keep * hourly[t - 1] + np.sqrt(1 - keep ** 2) * shocks[t]
    error = (NWP_DAILY_ERROR_SIGMA * rng.standard_normal(days)[:, None]
             + NWP_HOURLY_ERROR_SIGMA * hourly.reshape(days, 24))
    return np.clip(mean + NWP_SHRINK * (smooth - mean) + error, 0.05, 1.0).ravel()
