"""Example cases of the scheduler and the pricing strategy."""
import numpy as np
import pytest

from gridhive.agent import (DEFAULT_APPLIANCES, Appliance, Override, ScheduleError, limit_price,
                            make_orders, position, schedule)
from gridhive.agent.flex import SLOT_MS
from gridhive.market import MarketConfig, Side

DAY0_MS = 1_699_920_000_000  # a UTC midnight
SLOTS = 96
CONFIG = MarketConfig(feed_in_minor_per_kwh=4, retail_minor_per_kwh=21)


def slot_of(ts_ms):
    return (ts_ms - DAY0_MS) // SLOT_MS


def plan(apps, surplus_wh, overrides=(), import_price=None):
    import_price = np.full(2 * SLOTS, 21.0) if import_price is None else import_price
    return {p.appliance: p for p in schedule(apps, DAY0_MS, DAY0_MS, surplus_wh, import_price,
                                             np.full(2 * SLOTS, 4.0), overrides)}


def test_default_table_gets_its_hours_inside_each_window():
    plans = plan(DEFAULT_APPLIANCES, np.zeros(2 * SLOTS))
    expect = {"ev": (19 * 4, 30 * 4, 24), "water_heater": (6 * 4, 23 * 4, 12),
              "pool_pump": (12 * 4, 21 * 4, 32), "ac": (19 * 4, 24 * 4, 12)}
    for name, (first, end, required) in expect.items():
        slots = [slot_of(t) for t in plans[name].on_slot_ms]
        assert len(slots) == required and all(first <= s < end for s in slots), name
        assert plans[name].shortfall_slots == 0


def test_pool_pump_moves_into_the_forecast_surplus():
    surplus = np.zeros(2 * SLOTS)
    surplus[13 * 4:19 * 4] = 600.0  # 13:00-19:00: 2.4 kW of surplus, more than the pump's 2 kW
    pump = [a for a in DEFAULT_APPLIANCES if a.name == "pool_pump"]
    slots = sorted(slot_of(t) for t in plan(pump, surplus)["pool_pump"].on_slot_ms)
    assert set(range(13 * 4, 19 * 4)) <= set(slots)  # all 6 sunny hours used, 2 more elsewhere


def test_low_price_intervals_win_without_surplus():
    price = np.full(2 * SLOTS, 30.0)
    price[26 * 4:30 * 4] = 8.0  # 02:00-06:00 next day is cheap
    ev = [a for a in DEFAULT_APPLIANCES if a.name == "ev"]
    slots = {slot_of(t) for t in plan(ev, np.zeros(2 * SLOTS), import_price=price)["ev"].on_slot_ms}
    assert set(range(26 * 4, 30 * 4)) <= slots


def test_override_off_is_respected_and_leaves_a_shortfall_when_it_must():
    ev = [a for a in DEFAULT_APPLIANCES if a.name == "ev"]
    off = Override("ev", False, DAY0_MS + 19 * 3_600_000, DAY0_MS + 27 * 3_600_000)  # 19:00-03:00
    p = plan(ev, np.zeros(2 * SLOTS), [off])["ev"]
    assert all(not off.covers(t) for t in p.on_slot_ms)
    assert len(p.on_slot_ms) == 12 and p.shortfall_slots == 12  # only 03:00-06:00 left


def test_override_on_counts_toward_the_required_time():
    heater = [a for a in DEFAULT_APPLIANCES if a.name == "water_heater"]
    on = Override("water_heater", True, DAY0_MS + 7 * 3_600_000, DAY0_MS + 9 * 3_600_000)
    p = plan(heater, np.zeros(2 * SLOTS), [on])["water_heater"]
    assert len(p.on_slot_ms) == 12
    assert all(t in p.on_slot_ms for t in range(on.start_ms, on.end_ms, SLOT_MS))


@pytest.mark.parametrize("kwargs, field", [
    ({"power_w": 0}, "power_w"),
    ({"window_start_min": 7}, "window_start_min"),
    ({"required_min": 600}, "required_min"),
    ({"relay_id": ""}, "relay_id"),
])
def test_bad_appliance_names_the_field(kwargs, field):
    base = dict(name="x", power_w=1000, window_start_min=60, window_end_min=360, required_min=60,
                relay_id="r")
    with pytest.raises(ScheduleError) as e:
        Appliance(**{**base, **kwargs})
    assert e.value.field == field


def test_prices_follow_confidence():
    assert limit_price(Side.BID, 1.0, CONFIG) == 21
    assert limit_price(Side.OFFER, 1.0, CONFIG) == 4
    assert limit_price(Side.BID, 0.0, CONFIG) == limit_price(Side.OFFER, 0.0, CONFIG) == 12
    assert 12 < limit_price(Side.BID, 0.6, CONFIG) < 21


def test_orders_for_a_sunny_day():
    load = np.full(SLOTS, 500.0)
    pv = np.zeros(SLOTS)
    pv[40:64] = 3000.0  # 10:00-16:00
    band = np.full(SLOTS, 200.0)
    pos = position(DAY0_MS, load, pv, band, band, np.zeros(SLOTS), CONFIG.interval_ms)
    orders = make_orders("h1", pos, CONFIG, DAY0_MS - 3_600_000)
    offers = [o for o in orders if o.side == Side.OFFER]
    bids = [o for o in orders if o.side == Side.BID]
    assert len(offers) == 24 and all(o.energy_wh == 625 for o in offers)  # 2.5 kW for 15 min
    assert len(bids) == 72 and all(o.energy_wh == 125 for o in bids)
    # a surplus of 625 Wh against a band of 100 Wh is surer than a 125 Wh deficit: priced so
    assert offers[0].price_minor_per_kwh < 12 < bids[0].price_minor_per_kwh
