"""Accuracy regression: the shipped model against seasonal-naive on the shipped held-out set
(held-out households in held-out weeks), and the bench's figures."""
import pytest

from gridhive.forecast import LiteModel, bench
from gridhive.forecast.evaluate import heldout_report

LOAD_SKILL_PCT = 15.0  # MAE at least this far below the better seasonal-naive
PV_SKILL_PCT = 30.0    # with the day-ahead weather forecast


@pytest.fixture(scope="module")
def report():
    return heldout_report(LiteModel())


def test_load_beats_seasonal_naive(report):
    assert report["load"]["mae_skill_pct"] >= LOAD_SKILL_PCT
    assert report["load"]["rmse_w"] < report["load"]["naive"]["rmse_w"]
    assert report["load"]["r2"] > report["load"]["naive"]["r2"]


def test_pv_beats_seasonal_naive(report):
    assert report["pv"]["mae_skill_pct"] >= PV_SKILL_PCT
    assert report["pv"]["r2"] > report["pv"]["naive"]["r2"]
    # without a weather feed it still beats naive, by less
    assert report["pv_no_weather_forecast"]["mae_skill_pct"] > 0


def test_report_matches_the_model_card_figures(report):
    """The shipped model, its metadata and the held-out set belong together."""
    shipped = LiteModel().meta["heldout"]
    for series in ("load", "pv", "pv_no_weather_forecast"):
        assert report[series]["mae_w"] == pytest.approx(shipped[series]["mae_w"], rel=0.01)


def test_intraday_update_improves_the_next_hour(report):
    r = report["intraday_next_hour"]
    assert r["load_intraday"] < r["load_day_ahead"]
    assert r["pv_intraday"] < r["pv_day_ahead"]


def test_bench_reports_the_named_figures():
    figures = bench.run()
    for key in ("ms_per_household", "load_mae_skill_pct", "pv_mae_skill_pct", "model_load_ms",
                "model_bytes"):
        assert isinstance(figures[key], (int, float)), key
    assert figures["model_bytes"] <= 200 * 1024
    assert figures["ms_per_household"] < 50  # the goal is <= 1 ms; this only catches breakage
