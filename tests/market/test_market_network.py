"""DSO limits per connection point and per feeder; the NetworkCheck seam."""
import pytest

from gridhive.market import Community, Feeder, Member, clear
from market_fixtures import T0, bid, config, offer


def legs(result):
    return [(t.bid_id, t.offer_id, t.energy_wh) for t in result.trades]


def test_connection_point_import_limit_curtails_the_buyer():
    # 2 kW import limit over 15 min = 500 Wh.
    houses = Community((Member("b", "f1", max_import_w=2_000), Member("s", "f1")))
    result = clear([bid("B", "b", 1000, 30), offer("S", "s", 1000, 5)], config(), houses, T0)
    assert legs(result) == [("B", "S", 500)]
    assert result.curtailed_wh == 500


def test_export_limit_is_floored_to_whole_wh():
    # 1999 W over 15 min = 499.75 Wh -> 499 Wh, never above the limit.
    houses = Community((Member("b", "f1"), Member("s", "f1", max_export_w=1_999)))
    result = clear([bid("B", "b", 1000, 30), offer("S", "s", 1000, 5)], config(), houses, T0)
    assert result.energy_wh == 499


def test_feeder_limit_curtails_in_reverse_merit_order():
    # Feeder f2 may export 4 kW = 1000 Wh per interval to the rest of the community.
    # Merit order: B1-S1 800, B1-S2 200 (both cross-feeder), B2-S2 600 (cross), B2-S3 400 (inside
    # f1). The first 1000 Wh of f2's exports pass; B2-S2 is curtailed entirely; B2-S3 is untouched.
    houses = Community(
        (Member("b1", "f1"), Member("b2", "f1"), Member("s1", "f2"), Member("s2", "f2"),
         Member("s3", "f1")),
        (Feeder("f2", max_export_w=4_000),))
    book = [bid("B1", "b1", 1000, 30), bid("B2", "b2", 1000, 25),
            offer("S1", "s1", 800, 5), offer("S2", "s2", 800, 6), offer("S3", "s3", 400, 7)]
    result = clear(book, config(), houses, T0)
    assert legs(result) == [("B1", "S1", 800), ("B1", "S2", 200), ("B2", "S3", 400)]
    assert result.curtailed_wh == 600
    # The uniform price still comes from the unconstrained merit order: marginal B2 25 / S3 7.
    assert result.clearing_price_minor_per_kwh == 16


def test_feeder_import_limit_and_zero_limit():
    houses = Community((Member("b", "f1"), Member("s", "f2")),
                       (Feeder("f1", max_import_w=0),))
    result = clear([bid("B", "b", 1000, 30), offer("S", "s", 1000, 5)], config(), houses, T0)
    assert result.trades == () and result.curtailed_wh == 1000


class Halve:
    """A stand-in for the power-flow check: admits half of every trade."""

    def admit_wh(self, trades, interval_start_ms):
        assert interval_start_ms == T0
        return [t.energy_wh // 2 for t in trades]


class Broken:
    def admit_wh(self, trades, interval_start_ms):
        return [t.energy_wh + 1 for t in trades]


def test_extra_network_checks_run_after_the_limits():
    houses = Community((Member("b", "f1", max_import_w=2_000), Member("s", "f1")))
    book = [bid("B", "b", 1000, 30), offer("S", "s", 1000, 5)]
    result = clear(book, config(), houses, T0, network_checks=[Halve()])
    assert legs(result) == [("B", "S", 250)] and result.curtailed_wh == 750


def test_a_check_may_not_add_energy():
    houses = Community((Member("b", "f1"), Member("s", "f1")))
    with pytest.raises(RuntimeError, match="admitted"):
        clear([bid("B", "b", 1000, 30), offer("S", "s", 1000, 5)], config(), houses, T0,
              network_checks=[Broken()])
