"""Forecasts on the gateway: the shipped LiteRT model, per-household online correction, intraday
updates, and the seasonal-naive fallback.

Inference uses `ai-edge-litert` (LiteRT, the renamed TFLite runtime), or `tflite-runtime` on older
Pi images. TensorFlow is never needed here.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .features import (HISTORY_DAYS, HISTORY_SLOTS, LOAD_FEATURES, PV_FEATURES, SLOTS_PER_DAY,
                       Features, build_features)
from .samples import calendar
from .weather import DAY_MS, SLOT_MS, Site, clearsky_ghi_w_m2

MODEL_DIR = Path(__file__).parent / "models"
DEFAULT_MODEL_PATH = MODEL_DIR / "forecast.tflite"
QUANTILES = (0.1, 0.5, 0.9)
METHOD_MODEL = "model"
METHOD_NAIVE = "seasonal_naive"
METHOD_NONE = "no_history"
NO_WEATHER_NOTE = "no weather forecast: PV from clear-sky x yesterday's clearness"
# Intraday residual decay per 15-min step when the model's metadata has none (fitted at training).
DEFAULT_DECAY = {"load": 0.8, "pv": 0.9}


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # older Raspberry Pi OS images
        from tflite_runtime.interpreter import Interpreter
    return Interpreter


class LiteModel:
    """The shipped .tflite: rows of load and PV features in, (p10, p50, p90) per row out, scaled
    like the features (multiply by the household's scale)."""

    def __init__(self, path: Path = DEFAULT_MODEL_PATH, num_threads: int = 1):
        self.path = Path(path)
        self.model_bytes = self.path.stat().st_size
        meta_path = self.path.with_suffix(".json")
        self.meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        if self.meta and (tuple(self.meta["load_features"]) != LOAD_FEATURES
                          or tuple(self.meta["pv_features"]) != PV_FEATURES):
            raise ValueError(f"{self.path}: model was trained on other features; retrain it")
        self._interp = _interpreter_class()(model_path=str(self.path), num_threads=num_threads)
        self._index = self._tensor_indices()
        self._rows = -1

    def _tensor_indices(self) -> dict[str, int]:
        sig = self._interp._get_full_signature_list()["serving_default"]
        index = {**sig["inputs"], **sig["outputs"]}
        return {"load_x": index["load_x"], "pv_x": index["pv_x"],
                "load_q": index["load_q"], "pv_q": index["pv_q"]}

    def predict(self, load_x: np.ndarray, pv_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """load_x: [R, F_load], pv_x: [R, F_pv] float32 -> ([R, 3], [R, 3])."""
        rows = load_x.shape[0]
        if rows != self._rows:  # one resize per batch size, not per call
            self._interp.resize_tensor_input(self._index["load_x"], [rows, load_x.shape[1]])
            self._interp.resize_tensor_input(self._index["pv_x"], [rows, pv_x.shape[1]])
            self._interp.allocate_tensors()
            self._rows = rows
        self._interp.set_tensor(self._index["load_x"], np.ascontiguousarray(load_x, np.float32))
        self._interp.set_tensor(self._index["pv_x"], np.ascontiguousarray(pv_x, np.float32))
        self._interp.invoke()
        return (self._interp.get_tensor(self._index["load_q"]).copy(),
                self._interp.get_tensor(self._index["pv_q"]).copy())

    def decay(self, series: str) -> float:
        return float(self.meta.get("intraday_decay", DEFAULT_DECAY)[series])


def quantiles_w(model: LiteModel, feats: Features) -> tuple[np.ndarray, np.ndarray]:
    """Model quantiles in watts, [B, 96, 3] for load and PV: never negative, PV zero at night and
    for homes without PV, quantiles kept in order."""
    batch = feats.load_x.shape[0]
    load_q, pv_q = model.predict(feats.load_x.reshape(batch * SLOTS_PER_DAY, -1),
                                 feats.pv_x.reshape(batch * SLOTS_PER_DAY, -1))
    load_q = np.sort(np.maximum(load_q.reshape(batch, SLOTS_PER_DAY, 3), 0.0), axis=-1)
    pv_q = np.sort(np.maximum(pv_q.reshape(batch, SLOTS_PER_DAY, 3), 0.0), axis=-1)
    load_w = load_q * feats.load_scale_w[:, None, None]
    pv_w = pv_q * (feats.pv_scale_w[:, None, None] * feats.daylight[:, :, None])
    return load_w, pv_w


@dataclass(frozen=True)
class Forecast:
    """96 intervals of one local day for one household: median and 10/90 % quantiles (W)."""

    household_id: str
    day_start_ms: int
    load_w: np.ndarray
    pv_w: np.ndarray
    load_p10_w: np.ndarray
    load_p90_w: np.ndarray
    pv_p10_w: np.ndarray
    pv_p90_w: np.ndarray
    method: str        # "model", "seasonal_naive" or "no_history"
    note: str = ""     # why a fallback was used
    observed_slots: int = 0  # intraday: intervals already replaced by metered values
    load_scale_w: float = 0.0  # the household's mean load over the week before (model only)
    interval_ms: int = SLOT_MS

    @property
    def net_w(self) -> np.ndarray:
        """Expected import (+) or export (-) per interval, before any flexible load."""
        return self.load_w - self.pv_w

    def slot_start_ms(self, slot: int) -> int:
        return self.day_start_ms + slot * self.interval_ms


@dataclass
class Correction:
    """Per-household correction learned online from the household's own forecast errors.

    Load: an offset per hour of day that tracks the median error (stochastic sub-gradient of the
    absolute error, so it minimises MAE, the metric); PV: one factor that tracks the median ratio
    of metered to forecast output (shading or soiling the shared model cannot know). Steps are
    small, so a few odd days move it little; the state is plain numbers the gateway can persist.
    """

    load_offset: np.ndarray = field(default_factory=lambda: np.zeros(24))  # fraction of scale
    pv_factor: float = 1.0
    days_seen: int = 0
    load_step: float = 0.01  # of the household's mean load, per interval observed
    pv_step: float = 0.02    # in log, per day

    def apply(self, fc: Forecast) -> Forecast:
        hour = np.arange(SLOTS_PER_DAY) // 4
        shift = self.load_offset[hour] * fc.load_scale_w
        load = np.maximum(fc.load_w + shift, 0.0)
        return replace(fc, load_w=load, load_p10_w=np.maximum(fc.load_p10_w + shift, 0.0),
                       load_p90_w=np.maximum(fc.load_p90_w + shift, load),
                       pv_w=fc.pv_w * self.pv_factor, pv_p10_w=fc.pv_p10_w * self.pv_factor,
                       pv_p90_w=fc.pv_p90_w * self.pv_factor)

    def update(self, fc: Forecast, actual_load_w: np.ndarray, actual_pv_w: np.ndarray) -> None:
        """Learn from one metered day against the (already corrected) forecast of it."""
        hour = np.arange(SLOTS_PER_DAY) // 4
        ok = ~np.isnan(actual_load_w)
        sign = np.sign(np.where(ok, actual_load_w - fc.load_w, 0.0))
        np.add.at(self.load_offset, hour, self.load_step * sign)
        np.clip(self.load_offset, -2.0, 2.0, out=self.load_offset)  # a broken meter stays bounded
        lit = ~np.isnan(actual_pv_w) & (fc.pv_w > 0.05 * max(float(fc.pv_w.max()), 1e-9))
        if lit.any():  # at most pv_step (in log) per day, whatever the number of sunny intervals
            up = np.sign(actual_pv_w[lit] - fc.pv_w[lit]).mean()
            self.pv_factor = float(np.clip(self.pv_factor * np.exp(self.pv_step * up), 0.5, 2.0))
        self.days_seen += 1

    def to_dict(self) -> dict:
        return {"load_offset": self.load_offset.round(5).tolist(), "pv_factor": self.pv_factor,
                "days_seen": self.days_seen}

    @classmethod
    def from_dict(cls, d: dict) -> Correction:
        return cls(np.asarray(d["load_offset"], dtype=np.float64), float(d["pv_factor"]),
                   int(d["days_seen"]))


def _full_days(series_w: np.ndarray) -> int:
    return len(series_w) // SLOTS_PER_DAY


def seasonal_naive_forecast(household_id: str, day_start_ms: int, load_hist_w: np.ndarray,
                            pv_hist_w: np.ndarray, days: int) -> Forecast:
    """Same interval yesterday, with a wide ±50 % band so the agent prices it as uncertain."""
    if days == 0:
        zero = np.zeros(SLOTS_PER_DAY)
        return Forecast(household_id, day_start_ms, zero, zero, zero, zero, zero, zero,
                        METHOD_NONE, "no metered history yet: forecasting nothing")
    load = np.nan_to_num(np.asarray(load_hist_w[-SLOTS_PER_DAY:], dtype=np.float64))
    pv = np.nan_to_num(np.asarray(pv_hist_w[-SLOTS_PER_DAY:], dtype=np.float64))
    return Forecast(household_id, day_start_ms, load, pv, 0.5 * load, 1.5 * load, 0.5 * pv,
                    1.5 * pv, METHOD_NAIVE,
                    f"only {days} full day(s) of history (< {HISTORY_DAYS}): seasonal-naive "
                    "(same interval yesterday)")


class Forecaster:
    """Day-ahead and intraday forecasts for the households behind one gateway (one site)."""

    def __init__(self, site: Site, model: LiteModel | None = None, correct: bool = True):
        self.site = site
        self.model = model if model is not None else LiteModel()
        self.correct = correct
        self.corrections: dict[str, Correction] = {}
        self._clearsky: dict[int, np.ndarray] = {}

    def clearsky(self, day_start_ms: int) -> np.ndarray:
        """Clear-sky GHI for the 7 days before day_start_ms and that day: once per day per site."""
        if day_start_ms not in self._clearsky:
            self._clearsky = {day_start_ms: clearsky_ghi_w_m2(
                day_start_ms - HISTORY_DAYS * DAY_MS, HISTORY_SLOTS + SLOTS_PER_DAY, self.site)}
        return self._clearsky[day_start_ms]

    def day_ahead(self, household_id: str, load_hist_w, pv_hist_w, day_start_ms: int,
                  ghi_forecast_w_m2=None) -> Forecast:
        return self.day_ahead_many({household_id: (load_hist_w, pv_hist_w)}, day_start_ms,
                                   ghi_forecast_w_m2)[household_id]

    def day_ahead_many(self, histories: dict[str, tuple], day_start_ms: int,
                       ghi_forecast_w_m2=None) -> dict[str, Forecast]:
        """Forecast the local day starting at day_start_ms for each household, from its metered
        history up to day_start_ms: {id: (load_w, pv_w)}, 15-min means, oldest first, the last
        value being the interval just before day_start_ms; NaN marks a missing reading.

        ghi_forecast_w_m2: the site's day-ahead GHI forecast for the 96 intervals, if the gateway
        has one; without it PV rests on clear-sky times yesterday's clearness (less accurate, and
        the Forecast's note says so). Households with a full week of history share one model
        invocation; the others get the seasonal-naive fallback, which method and note say.
        """
        if self.site.local_midnight_ms(day_start_ms) != day_start_ms:
            raise ValueError(f"day_start_ms {day_start_ms} is not a local midnight")
        out: dict[str, Forecast] = {}
        ready = []
        for hid, (load_hist, pv_hist) in histories.items():
            days = min(_full_days(load_hist), _full_days(pv_hist))
            if days < HISTORY_DAYS:
                out[hid] = seasonal_naive_forecast(hid, day_start_ms, load_hist, pv_hist, days)
            else:
                ready.append(hid)
        if ready:
            cs = self.clearsky(day_start_ms)
            weekday, doy = calendar(np.array([day_start_ms]), self.site.utc_offset_ms)
            n = len(ready)
            weather = None if ghi_forecast_w_m2 is None else np.broadcast_to(
                np.asarray(ghi_forecast_w_m2, np.float64), (n, SLOTS_PER_DAY))
            feats = build_features(
                np.stack([np.asarray(histories[h][0][-HISTORY_SLOTS:], np.float64) for h in ready]),
                np.stack([np.asarray(histories[h][1][-HISTORY_SLOTS:], np.float64) for h in ready]),
                np.broadcast_to(cs, (n, cs.size)), np.repeat(weekday, n), np.repeat(doy, n),
                weather)
            load_w, pv_w = quantiles_w(self.model, feats)
            note = "" if weather is not None else NO_WEATHER_NOTE
            for i, hid in enumerate(ready):
                fc = Forecast(hid, day_start_ms, load_w[i, :, 1], pv_w[i, :, 1], load_w[i, :, 0],
                              load_w[i, :, 2], pv_w[i, :, 0], pv_w[i, :, 2], METHOD_MODEL, note,
                              load_scale_w=float(feats.load_scale_w[i]))
                if self.correct and hid in self.corrections:
                    fc = self.corrections[hid].apply(fc)
                out[hid] = fc
        return out

    def observe(self, fc: Forecast, actual_load_w: np.ndarray, actual_pv_w: np.ndarray) -> None:
        """Feed one metered day back: updates the household's correction (model forecasts only)."""
        if fc.method == METHOD_MODEL:
            self.corrections.setdefault(fc.household_id, Correction()).update(
                fc, np.asarray(actual_load_w, np.float64), np.asarray(actual_pv_w, np.float64))

    def intraday(self, fc: Forecast, observed_load_w: np.ndarray,
                 observed_pv_w: np.ndarray) -> Forecast:
        """Rolling update once the first k intervals of the day are metered: those become the
        metered values, and the rest move by the latest error, fading with the horizon (factor
        `decay` per 15 min; PV errors as a ratio, since clouds scale output)."""
        return intraday_update(fc, observed_load_w, observed_pv_w, self.model.decay("load"),
                               self.model.decay("pv"))


def intraday_update(fc: Forecast, observed_load_w: np.ndarray, observed_pv_w: np.ndarray,
                    load_decay: float, pv_decay: float) -> Forecast:
    k = min(len(observed_load_w), len(observed_pv_w), SLOTS_PER_DAY)
    if k == 0:
        return fc
    obs_load = np.asarray(observed_load_w[:k], np.float64)
    obs_pv = np.asarray(observed_pv_w[:k], np.float64)
    ahead = np.arange(1, SLOTS_PER_DAY - k + 1)
    recent = slice(max(k - 2, 0), k)
    load_err = np.nanmean(obs_load[recent] - fc.load_w[recent]) if not np.isnan(
        obs_load[recent]).all() else 0.0
    load_shift = np.zeros(SLOTS_PER_DAY)
    load_shift[k:] = load_err * load_decay ** ahead
    pv_recent = slice(max(k - 4, 0), k)
    fc_pv_sum = fc.pv_w[pv_recent].sum()
    pv_gain = np.ones(SLOTS_PER_DAY)
    if fc_pv_sum > 0 and not np.isnan(obs_pv[pv_recent]).any():
        ratio = float(np.clip(obs_pv[pv_recent].sum() / fc_pv_sum, 0.0, 2.0))
        pv_gain[k:] = 1.0 + (ratio - 1.0) * pv_decay ** ahead

    def merged(base, observed, new_tail):
        out = np.array(new_tail, dtype=np.float64)
        out[:k] = np.where(np.isnan(observed), base[:k], observed)
        return out

    load = merged(fc.load_w, obs_load, np.maximum(fc.load_w + load_shift, 0.0))
    pv = merged(fc.pv_w, obs_pv, fc.pv_w * pv_gain)
    return replace(
        fc, load_w=load, pv_w=pv,
        load_p10_w=merged(fc.load_p10_w, obs_load, np.maximum(fc.load_p10_w + load_shift, 0.0)),
        load_p90_w=merged(fc.load_p90_w, obs_load, np.maximum(fc.load_p90_w + load_shift, load)),
        pv_p10_w=merged(fc.pv_p10_w, obs_pv, fc.pv_p10_w * pv_gain),
        pv_p90_w=merged(fc.pv_p90_w, obs_pv, np.maximum(fc.pv_p90_w * pv_gain, pv)),
        observed_slots=k)
