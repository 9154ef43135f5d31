"""Export to the grid operator: schedules, metering and flexibility per congestion point.

Pure core: `export` (sums per congestion point, privacy) and `consent` (households' consent).
Adapters: `files` (CSV/JSON), `openadr` (OpenADR 2.0b VEN, needs openleadr) and `uftp`
(USEF/Shapeshifter aggregator, needs shapeshifter-uftp); import those modules directly.
"""
from .consent import PURPOSES, ConsentEntry, ConsentRegistry
from .export import (MIN_HOUSEHOLDS, PERIOD_MS, FlexCapacity, FlexOfferRow, GridExport,
                     HouseholdRow, PointRow, average_power_w, build_export, congestion_points,
                     flex_offers, household_series, per_point, planned_export_wh)
from .files import FILES, write_files

__all__ = [
    "FILES", "MIN_HOUSEHOLDS", "PERIOD_MS", "PURPOSES", "ConsentEntry", "ConsentRegistry",
    "FlexCapacity", "FlexOfferRow", "GridExport", "HouseholdRow", "PointRow", "average_power_w",
    "build_export", "congestion_points", "flex_offers", "household_series", "per_point",
    "planned_export_wh", "write_files",
]
