"""Household load and PV forecasting: dataset builder, features, LiteRT runtime, scoring.

The runtime needs only numpy, pvlib (solar position) and ai-edge-litert; training needs the
`train` extra (TensorFlow). See docs/FORECAST.md and MODEL_CARD.md.
"""
from .runtime import (DEFAULT_MODEL_PATH, METHOD_MODEL, METHOD_NAIVE, METHOD_NONE, Correction,
                      Forecast, Forecaster, LiteModel, intraday_update)
from .weather import Site

__all__ = [
    "DEFAULT_MODEL_PATH", "METHOD_MODEL", "METHOD_NAIVE", "METHOD_NONE", "Correction", "Forecast",
    "Forecaster", "LiteModel", "Site", "intraday_update",
]
