"""CSV and JSON files for operators without OpenADR or UFTP (thin writer around `GridExport`).

One CSV per table plus one JSON document with all of them. Times are UTC, both as ISO 8601 and
as ms since the epoch; energy in Wh, average power in W, both export-positive. A withheld
aggregate (too few households) is an empty CSV cell and JSON null.
"""
from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path

from .export import GridExport

FILES = ("schedules.csv", "metering.csv", "flex_offers.csv", "household_metering.csv",
         "export.json")


def iso_utc(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def tables(export: GridExport) -> dict[str, list[dict]]:
    def point(row) -> dict:
        return {"congestion_point": row.congestion_point,
                "period_start": iso_utc(row.period_start_ms),
                "period_start_ms": row.period_start_ms, "period_ms": row.period_ms,
                "households": row.households, "net_export_wh": row.net_export_wh,
                "net_export_w": row.net_export_w}

    return {
        "schedules": [point(r) for r in export.schedules],
        "metering": [point(r) for r in export.metering],
        "flex_offers": [{"congestion_point": r.congestion_point,
                         "period_start": iso_utc(r.period_start_ms),
                         "period_start_ms": r.period_start_ms, "period_ms": r.period_ms,
                         "households": r.households, "shed_w": r.shed_w,
                         "price_minor_per_kwh": r.price_minor_per_kwh}
                        for r in export.flex_offers],
        "household_metering": [{"member_id": r.member_id, "congestion_point": r.congestion_point,
                                "period_start": iso_utc(r.period_start_ms),
                                "period_start_ms": r.period_start_ms, "period_ms": r.period_ms,
                                "net_export_wh": r.net_export_wh}
                               for r in export.household_metering],
    }


def write_files(export: GridExport, directory: Path) -> list[Path]:
    """Write the CSV files and export.json into `directory`; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    data = tables(export)
    for name, rows in data.items():
        path = directory / f"{name}.csv"
        fields = _FIELDS[name]
        with path.open("w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        written.append(path)
    path = directory / "export.json"
    path.write_text(json.dumps({"recipient": export.recipient, **data}, indent=1) + "\n")
    written.append(path)
    return written


_POINT = ["congestion_point", "period_start", "period_start_ms", "period_ms", "households",
          "net_export_wh", "net_export_w"]
_FIELDS = {
    "schedules": _POINT,
    "metering": _POINT,
    "flex_offers": ["congestion_point", "period_start", "period_start_ms", "period_ms",
                    "households", "shed_w", "price_minor_per_kwh"],
    "household_metering": ["member_id", "congestion_point", "period_start", "period_start_ms",
                           "period_ms", "net_export_wh"],
}
