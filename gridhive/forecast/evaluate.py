"""Scoring: MAE, RMSE and R² (the papers' metrics) against seasonal-naive, through the runtime.

Seasonal-naive is the better (lower MAE over the whole set) of "same interval yesterday" and "same
interval last week". Load is scored on every interval; PV on daylight intervals of homes with PV
(night is zero for every method, and would only flatter R²). Skill = percent below naive's MAE.
"""
from __future__ import annotations

import numpy as np

from .features import build_features, seasonal_naive
from .runtime import (METHOD_MODEL, Correction, Forecast, LiteModel, intraday_update,
                      quantiles_w)
from .samples import Blocks, Samples, load_blocks, make_samples

INTRADAY_ISSUE_SLOTS = (24, 40, 56, 72)  # 06:00, 10:00, 14:00, 18:00
INTRADAY_HORIZON_SLOTS = 4               # scored on the next hour


def metrics(actual: np.ndarray, predicted: np.ndarray) -> dict:
    err = predicted - actual
    ss_tot = float(((actual - actual.mean()) ** 2).sum())
    return {"mae_w": round(float(np.abs(err).mean()), 2),
            "rmse_w": round(float(np.sqrt((err ** 2).mean())), 2),
            "r2": round(1.0 - float((err ** 2).sum()) / ss_tot, 4) if ss_tot > 0 else None}


def _series_report(actual, p50, p10, p90, naive_day, naive_week, mask) -> dict:
    a = actual[mask]
    model = metrics(a, p50[mask])
    by_day = metrics(a, naive_day[mask])
    by_week = metrics(a, naive_week[mask])
    best = min((by_day, "yesterday"), (by_week, "last_week"), key=lambda m: m[0]["mae_w"])
    skill = 100.0 * (1.0 - model["mae_w"] / best[0]["mae_w"])
    inside = (a >= p10[mask]) & (a <= p90[mask])
    return {**model, "naive": best[0], "naive_kind": best[1], "naive_yesterday": by_day,
            "naive_last_week": by_week, "mae_skill_pct": round(skill, 2),
            "p10_p90_coverage": round(float(inside.mean()), 3), "intervals": int(mask.sum())}


def _corrected(samples: Samples, blocks: Blocks, load_q, pv_q, scale) -> tuple[np.ndarray, ...]:
    """Replay the test days in time order through each household's online correction."""
    load = load_q[:, :, 1].copy()
    pv = pv_q[:, :, 1].copy()
    corrections: dict[str, Correction] = {}
    for i in range(len(samples.block)):
        hid = blocks.household_id[samples.block[i]]
        fc = Forecast(hid, int(samples.day_start_ms[i]), load[i], pv[i], load_q[i, :, 0],
                      load_q[i, :, 2], pv_q[i, :, 0], pv_q[i, :, 2], METHOD_MODEL,
                      load_scale_w=float(scale[i]))
        corr = corrections.setdefault(hid, Correction())
        fc = corr.apply(fc)
        load[i], pv[i] = fc.load_w, fc.pv_w
        corr.update(fc, samples.load_w[i], samples.pv_w[i])
    return load, pv


def intraday_mae(samples: Samples, load_q, pv_q, load_decay: float, pv_decay: float,
                 pv_mask: np.ndarray) -> dict:
    """MAE over the next hour after each issue time: day-ahead forecast vs its intraday update."""
    sums = {"load_day_ahead": 0.0, "load_intraday": 0.0, "pv_day_ahead": 0.0, "pv_intraday": 0.0}
    counts = {"load": 0, "pv": 0}
    for i in range(len(samples.block)):
        fc = Forecast("", 0, load_q[i, :, 1], pv_q[i, :, 1], load_q[i, :, 0], load_q[i, :, 2],
                      pv_q[i, :, 0], pv_q[i, :, 2], METHOD_MODEL)
        for k in INTRADAY_ISSUE_SLOTS:
            upd = intraday_update(fc, samples.load_w[i, :k], samples.pv_w[i, :k], load_decay,
                                  pv_decay)
            ahead = slice(k, k + INTRADAY_HORIZON_SLOTS)
            sums["load_day_ahead"] += np.abs(fc.load_w[ahead] - samples.load_w[i, ahead]).sum()
            sums["load_intraday"] += np.abs(upd.load_w[ahead] - samples.load_w[i, ahead]).sum()
            counts["load"] += INTRADAY_HORIZON_SLOTS
            m = pv_mask[i, ahead]
            sums["pv_day_ahead"] += np.abs(fc.pv_w[ahead] - samples.pv_w[i, ahead])[m].sum()
            sums["pv_intraday"] += np.abs(upd.pv_w[ahead] - samples.pv_w[i, ahead])[m].sum()
            counts["pv"] += int(m.sum())
    return {k: round(v / max(counts[k.split("_")[0]], 1), 2) for k, v in sums.items()}


def evaluate(model: LiteModel, blocks: Blocks, target_days=None, intraday: bool = True) -> dict:
    """Held-out report. PV is scored twice: with the day-ahead weather forecast (the blocks'
    ghi_forecast_w_m2) and without it (the persistence proxy)."""
    samples = make_samples(blocks, target_days)
    feats = build_features(samples.load_hist_w, samples.pv_hist_w, samples.clearsky_w_m2,
                           samples.weekday, samples.day_of_year, samples.ghi_forecast_w_m2)
    load_q, pv_q = quantiles_w(model, feats)
    no_fc = build_features(samples.load_hist_w, samples.pv_hist_w, samples.clearsky_w_m2,
                           samples.weekday, samples.day_of_year)
    _, pv_q_no_fc = quantiles_w(model, no_fc)
    load_day, load_week = seasonal_naive(samples.load_hist_w)
    pv_day, pv_week = seasonal_naive(samples.pv_hist_w)
    all_slots = np.ones_like(samples.load_w, dtype=bool)
    pv_mask = feats.daylight & (feats.pv_scale_w > 0)[:, None]
    report = {
        "households": len(set(blocks.household_id)), "days": int(len(samples.block)),
        "load": _series_report(samples.load_w, load_q[:, :, 1], load_q[:, :, 0], load_q[:, :, 2],
                               load_day, load_week, all_slots),
        "pv": _series_report(samples.pv_w, pv_q[:, :, 1], pv_q[:, :, 0], pv_q[:, :, 2], pv_day,
                             pv_week, pv_mask),
        "pv_no_weather_forecast": _series_report(
            samples.pv_w, pv_q_no_fc[:, :, 1], pv_q_no_fc[:, :, 0], pv_q_no_fc[:, :, 2], pv_day,
            pv_week, pv_mask),
    }
    load_c, pv_c = _corrected(samples, blocks, load_q, pv_q, feats.load_scale_w)
    report["corrected"] = {"load": metrics(samples.load_w, load_c),
                           "pv": metrics(samples.pv_w[pv_mask], pv_c[pv_mask])}
    if intraday:
        report["intraday_next_hour"] = intraday_mae(samples, load_q, pv_q, model.decay("load"),
                                                    model.decay("pv"), pv_mask)
    return report


def heldout_report(model: LiteModel | None = None, intraday: bool = True) -> dict:
    """The shipped model on the shipped held-out set (held-out homes in held-out weeks)."""
    return evaluate(model if model is not None else LiteModel(), load_blocks(), intraday=intraday)

