"""Power-flow network check on a Kerber low-voltage reference feeder (pandapower)."""
import warnings

import pytest

pytest.importorskip("pandapower")
warnings.filterwarnings("ignore", message=".*numba.*")

from gridhive.market import Community, ConfigError, Member, canonical_bytes, clear  # noqa: E402
from gridhive.market.powerflow import (PowerFlowCheck, assign_buses, household_buses,  # noqa: E402
                                       kerber_feeder)
from market_fixtures import T0, bid, config, offer  # noqa: E402

# Landnetz Freileitung 1: a 13-house overhead line, houses on buses 2 (next to the transformer)
# to 14 (the far end), NFA2X 4x70 conductors rated 270 A.
FEEDER = kerber_feeder("landnetz_freileitung_1")
SELLERS = [f"pv{bus:02d}" for bus in range(5, 15)]  # prosumers along the line
BUYERS = ["farm02", "farm03"]                         # two big consumers by the transformer
BUS_OF = {**{m: int(m[2:]) for m in SELLERS}, **{m: int(m[4:]) for m in BUYERS}}
HOUSES = Community(tuple(Member(m, "lv1", has_generation=m in SELLERS) for m in BUS_OF))


def export_wh(trades):
    position = {}
    for t in trades:
        position[t.seller_id] = position.get(t.seller_id, 0) + t.energy_wh
        position[t.buyer_id] = position.get(t.buyer_id, 0) - t.energy_wh
    return position


def overloading_book():
    # 10 x 9 kWh in 15 min = 360 kW fed in along the line and drawn at its start; less the
    # houses' own 8 kW each, the line next to bus 4 would carry ~280 kW: ~400 A.
    offers = [offer(f"S{i}", m, 9_000, 5 + i) for i, m in enumerate(SELLERS)]
    return offers + [bid("B2", "farm02", 45_000, 30), bid("B3", "farm03", 45_000, 28)]


@pytest.fixture(scope="module")
def check():
    return PowerFlowCheck(FEEDER, BUS_OF)


def test_the_feeder_is_within_limits_on_its_own(check):
    assert check.violations({}) == []
    assert household_buses(FEEDER) == list(range(2, 15))


def test_an_overloading_book_is_curtailed_to_a_flow_within_limits(check):
    book = overloading_book()
    unchecked = clear(book, config(), HOUSES, T0)
    assert any(v.startswith("line") for v in check.violations(export_wh(unchecked.trades)))

    result = clear(book, config(), HOUSES, T0, network_checks=[check])
    assert check.violations(export_wh(result.trades)) == []
    assert 0 < result.curtailed_wh < unchecked.energy_wh
    assert result.energy_wh + result.curtailed_wh == unchecked.energy_wh
    # Curtailment falls on the last-matched trades: a prefix of the merit order goes through whole.
    whole = [t.energy_wh == u.energy_wh for t, u in zip(result.trades, unchecked.trades)]
    assert whole[0] and whole == sorted(whole, reverse=True)
    # Close to the limit: the 1/64 bisection leaves at most one step per curtailed trade.
    assert result.energy_wh > 0.9 * 60_000
    # Deterministic: the same inputs give the same admitted volumes.
    again = clear(list(reversed(book)), config(), HOUSES, T0, network_checks=[check])
    assert canonical_bytes(again) == canonical_bytes(result)


def test_a_book_within_limits_is_untouched(check):
    book = [offer("S", "pv14", 2_000, 8), bid("B", "farm02", 2_000, 20)]
    result = clear(book, config(), HOUSES, T0, network_checks=[check])
    assert result == clear(book, config(), HOUSES, T0)


def test_nothing_is_admitted_when_the_feeder_already_breaks_its_limits():
    overloaded = kerber_feeder("landnetz_freileitung_1")
    overloaded.load["p_mw"] *= 25  # 200 kW per house: the far end drops below 0.9 pu
    check = PowerFlowCheck(overloaded, BUS_OF)
    assert check.violations({})
    book = [offer("S", "pv14", 1_000, 8), bid("B", "farm02", 1_000, 20)]
    result = clear(book, config(), HOUSES, T0, network_checks=[check])
    assert result.trades == () and result.curtailed_wh == 1_000


def test_members_must_sit_on_buses_of_the_feeder(check):
    with pytest.raises(ConfigError, match="not in the feeder"):
        PowerFlowCheck(FEEDER, {"x": 999})
    stranger = Community(HOUSES.members + (Member("stranger", "lv1"),))
    book = [offer("S", "stranger", 1_000, 8), bid("B", "farm02", 1_000, 20)]
    with pytest.raises(ConfigError, match="no bus for member stranger"):
        clear(book, config(), stranger, T0, network_checks=[check])


def test_members_are_assigned_round_robin_in_id_order():
    assert assign_buses(["b", "a", "c"], FEEDER) == {"a": 2, "b": 3, "c": 4}
    assert assign_buses([f"m{i:02d}" for i in range(14)], FEEDER)["m13"] == 2
