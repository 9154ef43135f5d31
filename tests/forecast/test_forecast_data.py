"""Dataset pieces (specs, splits, weather, PV, flexible loads) and the feature builder.

The CREST base load (richardsonpy, ~10-30 s per household-year) is not simulated here; its
determinism is checked by `gridhive forecast train` reusing its cache, see docs/FORECAST.md.
"""
import numpy as np
import pytest

from gridhive.forecast.dataset import (SITES, SLOTS_PER_YEAR, TEST_SPLIT, TRAIN_SPLIT, VAL_SPLIT,
                                       household_specs, simulate_flexible_w, simulate_pv_w,
                                       target_days, week_split)
from gridhive.forecast.features import (HISTORY_SLOTS, LOAD_FEATURES, PV_FEATURES, SLOTS_PER_DAY,
                                        build_features, fill_gaps, seasonal_naive)
from gridhive.forecast.weather import load_weather


@pytest.fixture(scope="module")
def weather():
    return load_weather("greensboro", seed=7)


def test_specs_are_deterministic_and_split_by_household():
    a, b = household_specs(40, seed=3), household_specs(40, seed=3)
    assert a == b and a != household_specs(40, seed=4)
    for split in (TRAIN_SPLIT, VAL_SPLIT, TEST_SPLIT):
        members = [s for s in a if s.split == split]
        assert {s.site for s in members} == set(SITES)  # every climate in every split
    assert sum(s.split == TEST_SPLIT for s in a) == 6
    assert 1 <= min(s.occupants for s in a) and max(s.occupants for s in a) <= 5


def test_weeks_are_split_disjointly_with_a_week_of_history():
    days = {split: set(target_days(split)) for split in (TRAIN_SPLIT, VAL_SPLIT, TEST_SPLIT)}
    assert not days[TEST_SPLIT] & days[TRAIN_SPLIT] and not days[VAL_SPLIT] & days[TEST_SPLIT]
    assert min(min(d) for d in days.values()) >= 7
    assert len({d // 7 for d in days[TEST_SPLIT]}) == 8
    assert all(week_split(d) == TEST_SPLIT for d in days[TEST_SPLIT])


def test_weather_is_deterministic_and_keeps_the_files_energy(weather):
    again = load_weather("greensboro", seed=7)
    np.testing.assert_array_equal(weather.ghi_w_m2, again.ghi_w_m2)
    np.testing.assert_array_equal(weather.ghi_forecast_w_m2, again.ghi_forecast_w_m2)
    assert weather.ghi_w_m2.size == SLOTS_PER_YEAR
    annual_15min = weather.ghi_w_m2.sum() / 4
    annual_file = weather.ghi_hourly_w_m2.sum()
    assert annual_15min == pytest.approx(annual_file, rel=0.02)


def test_weather_forecast_has_forecast_like_error(weather):
    """Better than persistence, far from perfect (see weather.nwp_like_clearness)."""
    actual = weather.ghi_w_m2.reshape(-1, 4).mean(axis=1)[24:]
    forecast = weather.ghi_forecast_w_m2.reshape(-1, 4).mean(axis=1)[24:]
    yesterday = weather.ghi_w_m2.reshape(-1, 4).mean(axis=1)[:-24]
    day = actual > 0
    rmse = np.sqrt(((forecast - actual)[day] ** 2).mean())
    persistence = np.sqrt(((yesterday - actual)[day] ** 2).mean())
    assert 0.2 < rmse / actual[day].mean() < 0.4
    assert 0.25 < 1 - rmse / persistence < 0.5


def test_pv_and_flexible_loads(weather):
    spec = next(s for s in household_specs(40) if s.site == "greensboro" and s.pv_kwp > 0
                and s.has_pool_pump)
    pv = simulate_pv_w(spec, weather)
    assert pv.shape == (SLOTS_PER_YEAR,) and pv.min() >= 0
    assert pv.max() <= spec.pv_kwp * 1000
    annual_kwh_per_kwp = pv.sum() / 4 / 1000 / spec.pv_kwp
    assert 900 < annual_kwh_per_kwp < 1700  # North Carolina rooftop yield
    occupants = np.ones(SLOTS_PER_YEAR)
    flex = simulate_flexible_w(spec, weather, occupants)
    again = simulate_flexible_w(spec, weather, occupants)
    np.testing.assert_array_equal(flex["pool_pump"], again["pool_pump"])
    pump = flex["pool_pump"].reshape(365, SLOTS_PER_DAY)
    assert pump[:100].sum() == 0 and (pump[200] > 0).sum() == 32  # off in winter, 8 h in July


def _week(seed):
    rng = np.random.default_rng(seed)
    load = 300 + 200 * rng.random((2, HISTORY_SLOTS))
    pv = np.tile(np.clip(np.sin(np.linspace(0, 2 * np.pi, SLOTS_PER_DAY)), 0, None) * 3000, 7)
    cs = np.tile(np.clip(np.sin(np.linspace(0, 2 * np.pi, SLOTS_PER_DAY)), 0, None) * 900, 8)
    return load, np.stack([pv, np.zeros(HISTORY_SLOTS)]), np.stack([cs, cs])


def test_features_shapes_scales_and_weather_flag():
    load, pv, cs = _week(1)
    f = build_features(load, pv, cs, np.array([0, 6]), np.array([100, 101]))
    assert f.load_x.shape == (2, SLOTS_PER_DAY, len(LOAD_FEATURES))
    assert f.pv_x.shape == (2, SLOTS_PER_DAY, len(PV_FEATURES))
    assert f.load_scale_w == pytest.approx(load.mean(axis=1))
    assert f.pv_scale_w[0] == pytest.approx(3000, rel=1e-3) and f.pv_scale_w[1] == 0  # no PV
    flag = PV_FEATURES.index("has_weather_forecast")
    assert not f.pv_x[:, :, flag].any()
    fc = np.stack([cs[0, -SLOTS_PER_DAY:] * 0.5, np.full(SLOTS_PER_DAY, np.nan)])
    g = build_features(load, pv, cs, np.array([0, 6]), np.array([100, 101]), fc)
    assert g.pv_x[0, :, flag].all() and not g.pv_x[1, :, flag].any()
    k = PV_FEATURES.index("forecast_clearness")
    assert g.pv_x[0, 24, k] == pytest.approx(0.5)


def test_gaps_are_filled_from_the_same_interval_on_other_days():
    h = np.tile(np.arange(SLOTS_PER_DAY, dtype=float), 7)
    h[5] = np.nan
    h[SLOTS_PER_DAY * 3:SLOTS_PER_DAY * 4] = np.nan
    filled = fill_gaps(h)[0]
    np.testing.assert_array_equal(filled, np.tile(np.arange(SLOTS_PER_DAY, dtype=float), 7))


def test_seasonal_naive_takes_yesterday_and_last_week():
    h = np.arange(HISTORY_SLOTS, dtype=float)
    day, week = seasonal_naive(h)
    np.testing.assert_array_equal(day[0], h[-SLOTS_PER_DAY:])
    np.testing.assert_array_equal(week[0], h[:SLOTS_PER_DAY])
