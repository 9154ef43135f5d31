"""Grid-operator export: per-congestion-point sums, privacy, consent, CSV/JSON files."""
import csv
import json

import pytest

from gridhive.gridops.consent import ConsentRegistry
from gridhive.gridops.export import (FlexCapacity, PointRow, build_export, congestion_points,
                                     per_point, planned_export_wh)
from gridhive.gridops.files import FILES, write_files
from gridhive.market import Community, Member, Order, Side

T0 = 1_717_200_000_000  # 2024-06-01 00:00 UTC
P = 900_000
HOUSES = Community((Member("a", "f1"), Member("b", "f1"), Member("c", "f1"), Member("d", "f2")))


def test_planned_export_comes_from_orders():
    orders = [Order("1", "a", Side.OFFER, 800, 10, T0 - 1, T0),
              Order("2", "b", Side.BID, 300, 20, T0 - 1, T0),
              Order("3", "b", Side.BID, 200, 20, T0 - 1, T0)]
    assert planned_export_wh(orders) == {"a": 800, "b": -500}


def test_sums_per_congestion_point_withhold_single_households():
    points = congestion_points(HOUSES)
    rows = per_point([(T0, {"a": 800, "b": -500, "c": -100, "d": -250})], points)
    assert rows == [PointRow("f1", T0, P, 3, 200), PointRow("f2", T0, P, 1, None)]
    assert rows[0].net_export_w == 800  # 200 Wh in 15 min
    # The DSO may map several feeders onto one congestion point.
    merged = per_point([(T0, {"a": 800, "d": -250})], congestion_points(HOUSES, {"f1": "cp",
                                                                                 "f2": "cp"}))
    assert merged == [PointRow("cp", T0, P, 2, 550)]


def test_consent_registry_latest_say_wins_and_persists(tmp_path):
    consents = ConsentRegistry()
    consents.grant("a", "dso", "metering", T0, note="panel")
    consents.revoke("a", "dso", "metering", T0 + 2 * P)
    assert not consents.allows("a", "dso", "metering", T0 - 1)
    assert consents.allows("a", "dso", "metering", T0 + P)
    assert not consents.allows("a", "dso", "metering", T0 + 2 * P)
    assert not consents.allows("a", "dso", "schedule", T0 + P)      # per purpose
    assert not consents.allows("a", "researcher", "metering", T0 + P)  # per recipient
    consents.save(tmp_path / "consent.jsonl")
    again = ConsentRegistry.load(tmp_path / "consent.jsonl")
    assert again.entries == consents.entries
    with pytest.raises(ValueError, match="time order"):
        again.grant("b", "dso", "metering", T0)
    with pytest.raises(ValueError, match="purpose"):
        again.grant("b", "dso", "selling", T0 + 3 * P)


def test_export_files_carry_aggregates_and_only_consented_households(tmp_path):
    consents = ConsentRegistry()
    consents.grant("d", "dso", "metering", T0 + P)  # from the second period on
    metered = [(T0, {"a": 700, "b": -400, "c": -50, "d": -300}),
               (T0 + P, {"a": 500, "b": -450, "c": -60, "d": -310})]
    planned = [(T0, {"a": 800, "b": -500, "c": -100, "d": -250})]
    flex = [FlexCapacity("b", T0, 3_650, 12), FlexCapacity("c", T0, 2_000, 9),
            FlexCapacity("d", T0, 1_500, 10), FlexCapacity("a", T0, 0, 5)]
    export = build_export("dso", HOUSES, planned, metered, flex, consents)
    paths = write_files(export, tmp_path)
    assert sorted(p.name for p in paths) == sorted(FILES)

    def read(name):
        with (tmp_path / name).open() as f:
            return list(csv.DictReader(f))

    assert [(r["congestion_point"], r["net_export_wh"]) for r in read("schedules.csv")] == [
        ("f1", "200"), ("f2", "")]
    assert read("metering.csv")[0]["period_start"] == "2024-06-01T00:00:00Z"
    assert [(r["congestion_point"], r["shed_w"], r["price_minor_per_kwh"])
            for r in read("flex_offers.csv")] == [("f1", "5650", "12"), ("f2", "", "")]
    # Only d's own series leaves, and only for the period after its consent.
    assert [(r["member_id"], r["period_start_ms"], r["net_export_wh"])
            for r in read("household_metering.csv")] == [("d", str(T0 + P), "-310")]
    document = json.loads((tmp_path / "export.json").read_text())
    assert document["recipient"] == "dso"
    assert {r["member_id"] for r in document["household_metering"]} == {"d"}
    assert "a" not in (tmp_path / "metering.csv").read_text().split(",")
