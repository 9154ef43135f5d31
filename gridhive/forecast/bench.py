"""`gridhive bench forecast`: accuracy on the shipped held-out set, and LiteRT speed.

ms_per_household is the day-ahead forecast of one household (features, one model invocation,
back to watts), best of several runs, on a gateway that forecasts its households in one batch;
the site's clear-sky irradiance is computed once per day for all of them and is not included.
"""
from __future__ import annotations

import time

from .evaluate import heldout_report
from .features import HISTORY_SLOTS
from .runtime import DEFAULT_MODEL_PATH, Forecaster, LiteModel
from .samples import load_blocks

BATCH_HOUSEHOLDS = 32
REPEATS = 20


def _best_ms(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1000.0


def run() -> dict:
    start = time.perf_counter()
    model = LiteModel(DEFAULT_MODEL_PATH)
    model_load_ms = (time.perf_counter() - start) * 1000.0
    blocks = load_blocks()
    forecaster = Forecaster(blocks.site[0], model, correct=False)
    day_start_ms = int(blocks.start_ms[0]) + 7 * 86_400_000
    one = {"h": (blocks.load_w[0, :HISTORY_SLOTS], blocks.pv_w[0, :HISTORY_SLOTS])}
    many = {f"h{i}": (blocks.load_w[i % len(blocks.household_id), :HISTORY_SLOTS],
                      blocks.pv_w[i % len(blocks.household_id), :HISTORY_SLOTS])
            for i in range(BATCH_HOUSEHOLDS)}
    weather = blocks.ghi_forecast_w_m2[0, HISTORY_SLOTS:HISTORY_SLOTS + 96]
    forecaster.day_ahead_many(many, day_start_ms, weather)  # warm: tensor sizes, clear-sky
    batch_ms = _best_ms(lambda: forecaster.day_ahead_many(many, day_start_ms, weather), REPEATS)
    forecaster.day_ahead_many(one, day_start_ms, weather)
    single_ms = _best_ms(lambda: forecaster.day_ahead_many(one, day_start_ms, weather), REPEATS)
    report = heldout_report(model, intraday=False)
    return {
        "ms_per_household": round(batch_ms / BATCH_HOUSEHOLDS, 4),
        "ms_single_household": round(single_ms, 4),
        "load_mae_skill_pct": report["load"]["mae_skill_pct"],
        "pv_mae_skill_pct": report["pv"]["mae_skill_pct"],
        "pv_mae_skill_pct_no_weather_forecast": report["pv_no_weather_forecast"]["mae_skill_pct"],
        "load_mae_w": report["load"]["mae_w"],
        "pv_mae_w": report["pv"]["mae_w"],
        "model_load_ms": round(model_load_ms, 3),
        "model_bytes": model.model_bytes,
        "heldout_days": report["days"],
        "quantized": bool(model.meta.get("quantized", False)),
        "interpreter": type(model._interp).__module__,
    }


if __name__ == "__main__":
    import json
    print(json.dumps(run(), indent=2))
