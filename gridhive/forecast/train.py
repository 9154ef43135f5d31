"""Rebuild the shipped model: dataset -> samples -> fit -> .tflite -> held-out report.

`gridhive forecast train` runs this. The dataset is built once and cached; training is a few
minutes on one thread. It writes models/forecast.tflite, its metadata models/forecast.json (feature
names, intraday decay, metrics) and the held-out set data/heldout.npz that the tests and the
benchmark score the shipped model on.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from .dataset import (DEFAULT_HOUSEHOLDS, DEFAULT_SEED, HISTORY_DAYS, TEST_SPLIT, TRAIN_SPLIT,
                      VAL_SPLIT, Dataset, build_dataset, target_days, week_split)
from .evaluate import evaluate, intraday_mae
from .features import LOAD_FEATURES, PV_FEATURES, SLOTS_PER_DAY, build_features
from .runtime import DEFAULT_MODEL_PATH, LiteModel, quantiles_w
from .samples import HELDOUT_PATH, Blocks, make_samples, save_blocks

DECAY_GRID = (0.5, 0.7, 0.8, 0.9, 0.95)
# Keep the int8 model when it is within this fraction of the float model's validation MAE.
QUANTIZE_TOLERANCE = 0.01


def year_blocks(ds: Dataset, households: list[int]) -> Blocks:
    return Blocks([ds.specs[i].household_id for i in households],
                  [ds.sites[ds.specs[i].site] for i in households],
                  np.array([ds.household_start_ms(i) for i in households], dtype=np.int64),
                  ds.load_w[households].astype(np.float64), ds.pv_w[households].astype(np.float64),
                  np.stack([ds.ghi_forecast_w_m2[ds.specs[i].site] for i in households]))


def week_blocks(ds: Dataset, households: list[int], split: str) -> Blocks:
    """One block per (household, week of the split): the week before, then the week itself."""
    weeks = sorted({d // 7 for d in target_days(split)})
    ids, sites, starts, loads, pvs, forecasts = [], [], [], [], [], []
    for i in households:
        for w in weeks:
            first = 7 * w - HISTORY_DAYS
            sl = slice(first * SLOTS_PER_DAY, (7 * w + 7) * SLOTS_PER_DAY)
            ids.append(ds.specs[i].household_id)
            sites.append(ds.sites[ds.specs[i].site])
            starts.append(ds.household_start_ms(i) + first * 86_400_000)
            loads.append(ds.load_w[i, sl])
            pvs.append(ds.pv_w[i, sl])
            forecasts.append(ds.ghi_forecast_w_m2[ds.specs[i].site][sl])
    return Blocks(ids, sites, np.array(starts, dtype=np.int64),
                  np.stack(loads).astype(np.float64), np.stack(pvs).astype(np.float64),
                  np.stack(forecasts))


def split_days(blocks: Blocks, split: str) -> list[np.ndarray]:
    """The days of each year-long block that belong to the split's weeks."""
    days = np.array([d for d in range(HISTORY_DAYS, blocks.days) if week_split(d) == split])
    return [days] * len(blocks.household_id)


def training_rows(blocks: Blocks, split: str, seed: int):
    """Rows of (features, scaled target, weight) for the split's days of these blocks. Half the
    days (at random) go without the weather forecast, so the one model serves gateways with and
    without a forecast feed."""
    s = make_samples(blocks, split_days(blocks, split))
    drop = np.random.default_rng(seed).random(len(s.block)) < 0.5
    s.ghi_forecast_w_m2[drop] = np.nan
    f = build_features(s.load_hist_w, s.pv_hist_w, s.clearsky_w_m2, s.weekday, s.day_of_year,
                       s.ghi_forecast_w_m2)
    # weights proportional to each home's scale make the scaled loss an error in watts
    load_w = np.repeat(f.load_scale_w, SLOTS_PER_DAY)
    load = (f.load_x.reshape(-1, len(LOAD_FEATURES)), (s.load_w / f.load_scale_w[:, None]).ravel(),
            load_w / load_w.mean())
    pv_rows = (f.daylight & (f.pv_scale_w > 0)[:, None]).ravel()
    pv_scale = np.repeat(f.pv_scale_w, SLOTS_PER_DAY)
    safe = np.maximum(pv_scale, 1.0)
    pv = (f.pv_x.reshape(-1, len(PV_FEATURES))[pv_rows], (s.pv_w.ravel() / safe)[pv_rows],
          pv_scale[pv_rows] / pv_scale[pv_rows].mean())
    return load, pv


def _fit_decay(model: LiteModel, blocks: Blocks, split: str) -> dict:
    """Pick the intraday error decay per series that minimises next-hour MAE on validation."""
    s = make_samples(blocks, split_days(blocks, split))
    f = build_features(s.load_hist_w, s.pv_hist_w, s.clearsky_w_m2, s.weekday, s.day_of_year,
                       s.ghi_forecast_w_m2)
    load_q, pv_q = quantiles_w(model, f)
    mask = f.daylight & (f.pv_scale_w > 0)[:, None]
    best = {}
    for series in ("load", "pv"):
        scores = {d: intraday_mae(s, load_q, pv_q, d, d, mask)[f"{series}_intraday"]
                  for d in DECAY_GRID}
        best[series] = min(scores, key=scores.get)
    return best


def _write_model(tflite: bytes, meta: dict, path: Path) -> LiteModel:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tflite)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return LiteModel(path)


def train(model_path: Path = DEFAULT_MODEL_PATH, heldout_path: Path = HELDOUT_PATH,
          n_households: int = DEFAULT_HOUSEHOLDS, seed: int = DEFAULT_SEED, epochs: int = 30,
          hidden: int = 64, batch_size: int = 1024, threads: int = 1, cache_dir: Path | None = None,
          log=print) -> dict:
    from . import model as nn
    nn.limit_threads(threads)
    log(f"dataset: {n_households} households, seed {seed} (cached after the first build)")
    ds = build_dataset(n_households, seed, cache_dir,
                       progress=lambda i, n, s: log(f"  simulated {s.household_id} ({i}/{n})"))
    train_blocks = year_blocks(ds, ds.households(TRAIN_SPLIT))
    val_blocks = year_blocks(ds, ds.households(VAL_SPLIT))
    test_blocks = week_blocks(ds, ds.households(TEST_SPLIT), TEST_SPLIT)
    (tl, tp), (vl, vp) = (training_rows(train_blocks, TRAIN_SPLIT, seed),
                          training_rows(val_blocks, VAL_SPLIT, seed + 1))
    log(f"rows: load {len(tl[1])} train / {len(vl[1])} val, pv {len(tp[1])} / {len(vp[1])}")
    load_model, pv_model = nn.build_models(len(LOAD_FEATURES), len(PV_FEATURES), hidden, seed)
    nn.fit(load_model, *tl, val=vl, epochs=epochs, batch_size=batch_size, seed=seed, log=log)
    nn.fit(pv_model, *tp, val=vp, epochs=epochs, batch_size=batch_size, seed=seed + 1, log=log)

    meta = {"version": 1, "load_features": list(LOAD_FEATURES), "pv_features": list(PV_FEATURES),
            "quantiles": [0.1, 0.5, 0.9], "hidden": hidden, "dataset_seed": seed,
            "households": n_households, "epochs_max": epochs}
    candidates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for quantize in (False, True):
            path = Path(tmp) / f"q{int(quantize)}.tflite"
            lite = _write_model(nn.to_tflite(load_model, pv_model, quantize), meta, path)
            val = evaluate(lite, val_blocks, split_days(val_blocks, VAL_SPLIT), intraday=False)
            candidates[quantize] = (path.read_bytes(), val)
            kind = "int8 weights" if quantize else "float32"
            log(f"validation ({kind}, {path.stat().st_size} B): load MAE {val['load']['mae_w']} W,"
                f" pv MAE {val['pv']['mae_w']} W, without weather forecast "
                f"{val['pv_no_weather_forecast']['mae_w']} W")
        f_val, q_val = candidates[False][1], candidates[True][1]
        quantize = all(q_val[k]["mae_w"] <= f_val[k]["mae_w"] * (1 + QUANTIZE_TOLERANCE)
                       for k in ("load", "pv", "pv_no_weather_forecast"))
        tflite = candidates[quantize][0]
        meta["quantized"] = quantize
        meta["intraday_decay"] = _fit_decay(_write_model(tflite, meta, Path(tmp) / "m.tflite"),
                                            val_blocks, VAL_SPLIT)
    meta["validation"] = candidates[quantize][1]
    lite = _write_model(tflite, meta, Path(model_path))
    save_blocks(test_blocks, Path(heldout_path))
    report = evaluate(lite, test_blocks)
    meta["heldout"] = report
    _write_model(tflite, meta, Path(model_path))
    log(f"wrote {model_path} ({len(tflite)} B, {'int8' if quantize else 'float32'} weights) and "
        f"{heldout_path}")
    return report
