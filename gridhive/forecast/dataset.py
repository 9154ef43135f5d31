"""Household dataset: consumption from the CREST model (richardsonpy), rooftop PV from pvlib.

Everything comes from data shipped inside the installed packages; nothing is downloaded. The build
is deterministic from one seed (richardsonpy draws from Python's global `random`, which is seeded
per household and restored afterwards) and is cached as one .npz under the cache directory.

Per household, 365 days at 15 min (interval means, local standard time from Jan 1):
- base load: richardsonpy, 1-minute CREST occupancy + appliances + lighting, 1-5 occupants, random
  appliance ownership, scaled to an annual demand drawn around richardsonpy's own per-occupant
  figures; its lighting sees the site's irradiance;
- flexible appliances (CONTEXT.md's table), run as an unmanaged home would: EV 3.65 kW charged on
  arrival, water heater 1.5 kW after the morning and evening draws, pool pump 2.0 kW on a daily
  timer in the swimming season, A/C 1.0 kW following the outdoor temperature;
- PV: pvlib ModelChain (PVWatts DC and inverter, physical AOI, SAPM cell temperature) for arrays of
  2.5-9 kWp at various tilts and orientations; about a third of the homes have none.

Splits: households by site-stratified permutation (test / validation / train) and time by week
(every sixth week is test, a disjoint set of weeks is validation), so held-out figures are for
homes and weeks the model never saw.
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .weather import DAYS_PER_YEAR, SLOTS_PER_DAY, Site, Weather, load_weather

DATASET_VERSION = 1
DEFAULT_SEED = 20_240_601
DEFAULT_HOUSEHOLDS = 40
SITES = ("greensboro", "miami", "sand_point")
FIRST_WEEKDAY = 4  # 2021-01-01 was a Friday (0 = Monday)
MINUTES_PER_DAY = 1440
SLOTS_PER_YEAR = DAYS_PER_YEAR * SLOTS_PER_DAY
TEST_SPLIT, VAL_SPLIT, TRAIN_SPLIT = "test", "val", "train"
HISTORY_DAYS = 7

# CONTEXT.md's flexible appliances (kW ratings)
EV_W, WATER_HEATER_W, POOL_PUMP_W, AC_W = 3650.0, 1500.0, 2000.0, 1000.0
# richardsonpy's own annual demand for a single-family house by occupants (kWh)
CREST_SFH_KWH = {1: 2700, 2: 3200, 3: 4000, 4: 4400, 5: 5500}
POOL_SEASON_DOY = {"greensboro": (121, 273), "miami": (1, 365)}  # first..last day of year
AC_SHARE = {"greensboro": 0.6, "miami": 0.9, "sand_point": 0.0}


@dataclass(frozen=True)
class HouseholdSpec:
    household_id: str
    site: str
    occupants: int
    annual_base_kwh: float
    pv_kwp: float          # 0: no PV
    pv_tilt_deg: float
    pv_azimuth_deg: float  # 180 = south
    has_ev: bool
    has_water_heater: bool
    has_pool_pump: bool
    has_ac: bool
    split: str
    seed: int


def household_specs(n_households: int = DEFAULT_HOUSEHOLDS,
                    seed: int = DEFAULT_SEED) -> list[HouseholdSpec]:
    rng = np.random.default_rng(seed)
    by_site: dict[str, list[int]] = {s: [] for s in SITES}
    for i in range(n_households):
        by_site[SITES[i % len(SITES)]].append(i)
    split_of = {}
    for members in by_site.values():
        order = rng.permutation(members)
        for rank, i in enumerate(order):
            split_of[int(i)] = TEST_SPLIT if rank < 2 else VAL_SPLIT if rank < 4 else TRAIN_SPLIT
    specs = []
    for i in range(n_households):
        site = SITES[i % len(SITES)]
        occupants = int(rng.integers(1, 6))
        has_pv = rng.random() < 0.7
        specs.append(HouseholdSpec(
            household_id=f"h{i:02d}",
            site=site,
            occupants=occupants,
            annual_base_kwh=round(CREST_SFH_KWH[occupants] * float(rng.lognormal(0.0, 0.2)), 1),
            pv_kwp=round(float(rng.uniform(2.5, 9.0)) * 2) / 2 if has_pv else 0.0,
            pv_tilt_deg=round(float(rng.uniform(10, 40)), 1),
            pv_azimuth_deg=round(float(np.clip(rng.normal(180, 45), 90, 270)), 1),
            has_ev=bool(rng.random() < 0.4),
            has_water_heater=bool(rng.random() < 0.5),
            has_pool_pump=bool(site in POOL_SEASON_DOY and rng.random() < 0.25),
            has_ac=bool(rng.random() < AC_SHARE[site]),
            split=split_of[i],
            seed=int(rng.integers(0, 2**31 - 1)),
        ))
    return specs


def _weekday(day: np.ndarray | int):
    return (np.asarray(day) + FIRST_WEEKDAY) % 7


def simulate_base_load_w(spec: HouseholdSpec, weather: Weather) -> tuple[np.ndarray, np.ndarray]:
    """CREST base load at 15 min (W) and active occupants at 15 min, from richardsonpy."""
    import richardsonpy.classes.electric_load as eload
    import richardsonpy.classes.occupancy as occupancy
    import richardsonpy.functions.change_resolution as cr

    state = random.getstate()
    random.seed(spec.seed)
    try:
        occ = occupancy.Occupancy(number_occupants=spec.occupants, initial_day=FIRST_WEEKDAY + 1)
        q_direct = cr.change_resolution(weather.ghi_hourly_w_m2 - weather.dhi_hourly_w_m2, 3600, 60)
        q_diffuse = cr.change_resolution(weather.dhi_hourly_w_m2, 3600, 60)
        load = eload.ElectricLoad(occ_profile=occ.occupancy, total_nb_occ=spec.occupants,
                                  q_direct=q_direct, q_diffuse=q_diffuse,
                                  annual_demand=spec.annual_base_kwh, do_normalization=True,
                                  randomize_appliances=True, prev_heat_dev=True,
                                  initial_day=FIRST_WEEKDAY + 1, timestep=60)
    finally:
        random.setstate(state)
    base_w = np.asarray(load.loadcurve, dtype=np.float64).reshape(-1, 15).mean(axis=1)
    occ_10min = np.asarray(occ.occupancy, dtype=np.float64)  # active occupants per 10 min
    occ_15min = np.repeat(occ_10min, 2).reshape(-1, 3).mean(axis=1)
    return base_w[:SLOTS_PER_YEAR], occ_15min[:SLOTS_PER_YEAR]


def _add_run(minutes_w: np.ndarray, start_min: float, duration_min: float, power_w: float) -> None:
    start = int(round(start_min))
    stop = min(start + int(round(duration_min)), minutes_w.size)
    if stop > start >= 0:
        minutes_w[start:stop] += power_w


def simulate_flexible_w(spec: HouseholdSpec, weather: Weather,
                        occupants_15min: np.ndarray) -> dict[str, np.ndarray]:
    """Unmanaged use of the flexible appliances, 15-min mean power per appliance (W)."""
    rng = np.random.default_rng([spec.seed, 1])
    minutes = DAYS_PER_YEAR * MINUTES_PER_DAY
    days = np.arange(DAYS_PER_YEAR)
    weekend = _weekday(days) >= 5
    daily_temp_c = weather.temp_air_c.reshape(DAYS_PER_YEAR, SLOTS_PER_DAY).mean(axis=1)
    out = {}
    if spec.has_ev:
        ev = np.zeros(minutes)
        for d in days:
            if rng.random() < (0.45 if weekend[d] else 0.75):
                arrive_h = rng.normal(15.0, 3.0) if weekend[d] else rng.normal(18.5, 1.2)
                energy_wh = rng.uniform(4_000, 20_000)
                _add_run(ev, d * MINUTES_PER_DAY + 60 * float(np.clip(arrive_h, 12.0, 23.5)),
                         60 * energy_wh / EV_W, EV_W)
        out["ev"] = ev
    if spec.has_water_heater:
        wh = np.zeros(minutes)
        for d in days:
            # more reheating when cold water and air are cold
            cold = float(np.clip((20.0 - daily_temp_c[d]) / 15.0, 0.0, 1.0))
            hours = float(np.clip(2.2 + 1.3 * cold + rng.normal(0, 0.4), 1.5, 4.5))
            morning_h = rng.normal(8.0, 0.7) if weekend[d] else rng.normal(6.6, 0.4)
            _add_run(wh, d * MINUTES_PER_DAY + 60 * morning_h, 60 * 0.4 * hours, WATER_HEATER_W)
            _add_run(wh, d * MINUTES_PER_DAY + 60 * rng.normal(18.8, 1.0), 60 * 0.6 * hours,
                     WATER_HEATER_W)
        out["water_heater"] = wh
    if spec.has_pool_pump:
        pump = np.zeros(minutes)
        first, last = POOL_SEASON_DOY[spec.site]
        start_h = float(rng.integers(9, 13))  # a timer, the same every day
        for d in days:
            if first <= d + 1 <= last:
                _add_run(pump, d * MINUTES_PER_DAY + 60 * start_h, 8 * 60, POOL_PUMP_W)
        out["pool_pump"] = pump
    result = {name: w.reshape(-1, 15).mean(axis=1) for name, w in out.items()}
    if spec.has_ac:
        setpoint_c = rng.uniform(23.0, 26.0)
        duty = np.clip((weather.temp_air_c - setpoint_c) / 6.0, 0.0, 1.0)
        slot_h = (np.arange(SLOTS_PER_YEAR) % SLOTS_PER_DAY) / 4.0
        # cooled fully in the 12:00-24:00 living hours when someone is active, set back otherwise
        living = (slot_h >= 12.0) & (occupants_15min > 0)
        result["ac"] = AC_W * duty * np.where(living, 1.0, 0.3)
    return result



def simulate_pv_w(spec: HouseholdSpec, weather: Weather) -> np.ndarray:
    """AC output (W) per 15-min interval from pvlib's ModelChain; zeros without PV."""
    if spec.pv_kwp <= 0:
        return np.zeros(SLOTS_PER_YEAR)
    import pandas as pd
    import pvlib
    from pvlib.modelchain import ModelChain
    from pvlib.pvsystem import PVSystem

    times = pd.DatetimeIndex(
        (weather.start_ms + 450_000 + 900_000 * np.arange(SLOTS_PER_YEAR, dtype=np.int64))
        * 1_000_000, tz="UTC")
    dc_w = spec.pv_kwp * 1000.0
    system = PVSystem(
        surface_tilt=spec.pv_tilt_deg, surface_azimuth=spec.pv_azimuth_deg,
        module_parameters={"pdc0": dc_w, "gamma_pdc": -0.0037},
        inverter_parameters={"pdc0": dc_w / 1.15},  # DC/AC ratio 1.15: clips on the best days
        temperature_model_parameters=pvlib.temperature.TEMPERATURE_MODEL_PARAMETERS["sapm"][
            "close_mount_glass_glass"])
    location = pvlib.location.Location(weather.site.latitude_deg, weather.site.longitude_deg)
    chain = ModelChain.with_pvwatts(system, location, aoi_model="physical",
                                    spectral_model="no_loss")
    chain.run_model(pd.DataFrame({
        "ghi": weather.ghi_w_m2, "dni": weather.dni_w_m2, "dhi": weather.dhi_w_m2,
        "temp_air": weather.temp_air_c, "wind_speed": weather.wind_speed_m_s}, index=times))
    ac_w = np.nan_to_num(np.asarray(chain.results.ac, dtype=np.float64))
    return np.clip(ac_w, 0.0, None) * 0.93  # soiling, wiring and mismatch losses


@dataclass
class Dataset:
    specs: list[HouseholdSpec]
    sites: dict[str, Site]
    start_ms: dict[str, int]       # UTC ms of Jan 1 00:00 local standard time, per site
    load_w: np.ndarray             # [households, slots] total consumption
    base_load_w: np.ndarray        # [households, slots] without the flexible appliances
    pv_w: np.ndarray               # [households, slots] PV output
    seed: int
    ghi_forecast_w_m2: dict[str, np.ndarray]  # per site: the synthetic day-ahead GHI forecast

    def households(self, split: str) -> list[int]:
        return [i for i, s in enumerate(self.specs) if s.split == split]

    def household_start_ms(self, i: int) -> int:
        return self.start_ms[self.specs[i].site]


def week_split(day: int) -> str:
    """Time split by week of the year: every sixth week from week 4 is test, from week 1 val."""
    week = day // 7
    if week % 6 == 4:
        return TEST_SPLIT
    if week % 6 == 1:
        return VAL_SPLIT
    return TRAIN_SPLIT


def target_days(split: str) -> list[int]:
    """Days whose whole day is forecast in this split; each has a full week of history before it."""
    return [d for d in range(HISTORY_DAYS, DAYS_PER_YEAR - 1) if week_split(d) == split]


def _cached_base_load_w(spec: HouseholdSpec, weather: Weather, cache_dir: Path):
    """The CREST run is the slow part (~10 s per household-year), so it is cached on its own."""
    path = cache_dir / (f"crest-v{DATASET_VERSION}-{spec.site}-{spec.occupants}occ-"
                        f"{spec.annual_base_kwh}kwh-seed{spec.seed}.npz")
    if path.exists():
        with np.load(path) as z:
            return z["base_w"], z["occupants"]
    base_w, occupants = simulate_base_load_w(spec, weather)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, base_w=base_w, occupants=occupants)
    os.replace(tmp, path)
    return base_w, occupants


def simulate_household(spec: HouseholdSpec, weather: Weather, cache_dir: Path):
    base_w, occupants = _cached_base_load_w(spec, weather, cache_dir)
    flex = simulate_flexible_w(spec, weather, occupants)
    load_w = base_w + sum(flex.values(), np.zeros(SLOTS_PER_YEAR))
    return load_w, base_w, simulate_pv_w(spec, weather)


def default_cache_dir() -> Path:
    return Path(os.environ.get("GRIDHIVE_CACHE_DIR", "var/cache")) / "forecast"


def build_dataset(n_households: int = DEFAULT_HOUSEHOLDS, seed: int = DEFAULT_SEED,
                  cache_dir: Path | None = None, progress=None) -> Dataset:
    """Build (or read from the cache) the dataset; the same seed always gives the same arrays."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache_dir / f"dataset-v{DATASET_VERSION}-seed{seed}-n{n_households}.npz"
    specs = household_specs(n_households, seed)
    weather = {s: load_weather(s, seed + k) for k, s in enumerate(SITES)}
    sites = {s: w.site for s, w in weather.items()}
    start_ms = {s: w.start_ms for s, w in weather.items()}
    forecast = {s: w.ghi_forecast_w_m2 for s, w in weather.items()}
    if path.exists():
        with np.load(path) as z:
            return Dataset(specs, sites, start_ms, z["load_w"], z["base_load_w"], z["pv_w"], seed,
                           forecast)
    load = np.zeros((n_households, SLOTS_PER_YEAR), dtype=np.float32)
    base = np.zeros_like(load)
    pv = np.zeros_like(load)
    for i, spec in enumerate(specs):
        load[i], base[i], pv[i] = simulate_household(spec, weather[spec.site], cache_dir)
        if progress:
            progress(i + 1, n_households, spec)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, load_w=load, base_load_w=base, pv_w=pv,
                        specs=json.dumps([asdict(s) for s in specs]))
    os.replace(tmp, path)
    return Dataset(specs, sites, start_ms, load, base, pv, seed, forecast)
