"""The gateway runtime on the shipped model and the shipped held-out data."""
import numpy as np
import pytest

from gridhive.forecast import (METHOD_MODEL, METHOD_NAIVE, METHOD_NONE, Correction, Forecast,
                               Forecaster, LiteModel)
from gridhive.forecast.features import HISTORY_SLOTS, SLOTS_PER_DAY
from gridhive.forecast.samples import load_blocks
from gridhive.forecast.weather import DAY_MS

MAX_MODEL_BYTES = 200 * 1024


@pytest.fixture(scope="module")
def model():
    return LiteModel()


@pytest.fixture(scope="module")
def blocks():
    return load_blocks()


def _history(blocks, k, days=7):
    end = HISTORY_SLOTS
    start = end - days * SLOTS_PER_DAY
    return blocks.load_w[k, start:end], blocks.pv_w[k, start:end]


def _day_start(blocks, k):
    return int(blocks.start_ms[k]) + 7 * DAY_MS


def _pv_block(blocks):
    return next(k for k in range(len(blocks.household_id)) if blocks.pv_w[k].max() > 500)


def test_shipped_model_is_small_and_matches_the_features(model):
    assert 0 < model.model_bytes <= MAX_MODEL_BYTES
    assert model.meta["version"] == 1


def test_day_ahead_is_96_ordered_nonnegative_quantiles(model, blocks):
    k = _pv_block(blocks)
    f = Forecaster(blocks.site[k], model)
    weather = blocks.ghi_forecast_w_m2[k, HISTORY_SLOTS:HISTORY_SLOTS + SLOTS_PER_DAY]
    fc = f.day_ahead("h", *_history(blocks, k), _day_start(blocks, k), weather)
    assert fc.method == METHOD_MODEL and fc.note == ""
    for lo, mid, hi in ((fc.load_p10_w, fc.load_w, fc.load_p90_w),
                        (fc.pv_p10_w, fc.pv_w, fc.pv_p90_w)):
        assert lo.shape == mid.shape == hi.shape == (SLOTS_PER_DAY,)
        assert (lo >= 0).all() and (lo <= mid).all() and (mid <= hi).all()
    assert fc.pv_w[:8].max() == 0 and fc.pv_w.max() > 100  # dark at midnight, sunny at noon
    assert fc.slot_start_ms(4) == fc.day_start_ms + 3_600_000
    no_weather = f.day_ahead("h", *_history(blocks, k), _day_start(blocks, k))
    assert "no weather forecast" in no_weather.note


def test_batch_equals_one_by_one(model, blocks):
    f = Forecaster(blocks.site[0], model)
    day = _day_start(blocks, 0)
    same_site = [k for k in range(len(blocks.household_id))
                 if blocks.site[k] == blocks.site[0] and blocks.start_ms[k] == blocks.start_ms[0]]
    many = f.day_ahead_many({str(k): _history(blocks, k) for k in same_site}, day)
    for k in same_site:
        one = f.day_ahead(str(k), *_history(blocks, k), day)
        np.testing.assert_allclose(many[str(k)].load_w, one.load_w, rtol=1e-5, atol=1e-3)


def test_under_a_week_of_history_falls_back_to_seasonal_naive_and_says_so(model, blocks):
    f = Forecaster(blocks.site[0], model)
    load, pv = _history(blocks, 0, days=3)
    fc = f.day_ahead("h", load, pv, _day_start(blocks, 0))
    assert fc.method == METHOD_NAIVE and "3 full day(s)" in fc.note
    np.testing.assert_array_equal(fc.load_w, load[-SLOTS_PER_DAY:])
    empty = f.day_ahead("h", np.array([]), np.array([]), _day_start(blocks, 0))
    assert empty.method == METHOD_NONE and not empty.load_w.any()


def test_missing_readings_are_tolerated(model, blocks):
    f = Forecaster(blocks.site[0], model)
    load, pv = (a.copy() for a in _history(blocks, 0))
    load[100:300] = np.nan
    pv[500:520] = np.nan
    fc = f.day_ahead("h", load, pv, _day_start(blocks, 0))
    assert np.isfinite(fc.load_w).all() and np.isfinite(fc.pv_w).all()


def test_day_start_must_be_local_midnight(model, blocks):
    with pytest.raises(ValueError, match="local midnight"):
        Forecaster(blocks.site[0], model).day_ahead("h", *_history(blocks, 0),
                                                    _day_start(blocks, 0) + 900_000)


def test_intraday_update_uses_the_metered_morning(model, blocks):
    k = _pv_block(blocks)
    f = Forecaster(blocks.site[k], model)
    fc = f.day_ahead("h", *_history(blocks, k), _day_start(blocks, k))
    seen = 48
    load_obs = fc.load_w[:seen] + 400.0  # the home uses 400 W more than forecast this morning
    pv_obs = fc.pv_w[:seen] * 0.5        # and it is cloudier
    upd = f.intraday(fc, load_obs, pv_obs)
    assert upd.observed_slots == seen
    np.testing.assert_allclose(upd.load_w[:seen], load_obs)
    assert upd.load_w[seen] > fc.load_w[seen] + 100           # the next interval moves up ...
    assert abs(upd.load_w[-1] - fc.load_w[-1]) < 1.0           # ... the evening barely
    lit = fc.pv_w[seen:] > 50
    assert (upd.pv_w[seen:][lit] < fc.pv_w[seen:][lit]).all()  # afternoon PV scaled down


def test_online_correction_learns_a_households_bias(model, blocks):
    f = Forecaster(blocks.site[0], model)
    day = _day_start(blocks, 0)
    fc = f.day_ahead("h", *_history(blocks, 0), day)
    for _ in range(30):  # this home always uses 300 W more than the shared model expects
        f.observe(f.day_ahead("h", *_history(blocks, 0), day), fc.load_w + 300.0, fc.pv_w)
    corrected = f.day_ahead("h", *_history(blocks, 0), day)
    shift = np.median(corrected.load_w - fc.load_w)
    assert 150.0 < shift < 450.0
    c = f.corrections["h"]
    restored = Correction.from_dict(c.to_dict())
    np.testing.assert_allclose(restored.load_offset, c.load_offset, atol=1e-5)
    assert restored.days_seen == 30


def test_online_correction_learns_shading():
    fc_pv = np.zeros(SLOTS_PER_DAY)
    fc_pv[30:66] = 2000.0
    fc = Forecast("h", 0, np.full(SLOTS_PER_DAY, 500.0), fc_pv, *(np.zeros(SLOTS_PER_DAY),) * 4,
                  METHOD_MODEL, load_scale_w=500.0)
    c = Correction()
    for _ in range(40):  # a tree shades the array: it makes 70 % of what the model expects
        c.update(c.apply(fc), fc.load_w, 0.7 * fc_pv)
    assert 0.6 < c.pv_factor < 0.8
