"""Property tests of the agent's pure cores: orders and flexible-load schedules."""
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridhive.agent import Appliance, Override, confidence, make_orders, position, schedule
from gridhive.agent.flex import SLOT_MS
from gridhive.market import BookRules, Community, MarketConfig, Member, Side

DAY_MS = 86_400_000
DAY0_MS = 1_700_006_400_000 - 1_700_006_400_000 % DAY_MS  # a UTC midnight
SLOTS = 96

# hourly values, each held for four 15-min intervals (keeps examples small enough to shrink)
watts = st.lists(st.floats(0, 8000, allow_nan=False), min_size=24, max_size=24).map(
    lambda v: np.repeat(v, 4))


@st.composite
def tariffs(draw):
    feed_in = draw(st.integers(0, 40))
    retail = draw(st.integers(feed_in, 80))
    interval_ms = draw(st.sampled_from([900_000, 1_800_000, 3_600_000]))
    lead_ms = draw(st.sampled_from([0, 900_000, 3_600_000]))
    return MarketConfig(feed_in, retail, interval_ms=interval_ms, gate_closure_lead_ms=lead_ms)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.large_base_example])
@given(load=watts, pv=watts, load_band=watts, pv_band=watts, flex=watts, config=tariffs(),
       budget=st.one_of(st.none(), st.integers(0, 5_000_000)), alpha=st.floats(0, 1),
       now_offset_slots=st.integers(-8, 100))
def test_orders_stay_within_forecast_budget_and_tariffs(load, pv, load_band, pv_band, flex, config,
                                                        budget, alpha, now_offset_slots):
    pos = position(DAY0_MS, load, pv, load_band, pv_band, flex, config.interval_ms)
    now_ms = DAY0_MS + now_offset_slots * SLOT_MS
    orders = make_orders("m1", pos, config, now_ms, budget, alpha)
    by_interval = dict(zip(pos.interval_start_ms.tolist(), pos.net_wh.tolist()))
    spent = 0
    for o in orders:
        net_wh = by_interval[o.interval_start_ms]
        assert config.feed_in_minor_per_kwh <= o.price_minor_per_kwh <= config.retail_minor_per_kwh
        assert o.energy_wh >= 1
        if o.side == Side.OFFER:
            assert o.energy_wh <= -net_wh  # never more than the forecast surplus
        else:
            assert o.energy_wh <= net_wh   # never more than the forecast deficit
            spent += o.energy_wh * o.price_minor_per_kwh
        assert o.ts_ms == now_ms <= o.interval_start_ms - config.gate_closure_lead_ms
    if budget is not None:
        assert spent <= budget
    # and the market core admits every one of them
    community = Community((Member("m1", "f1"),))
    for start in {o.interval_start_ms for o in orders}:
        rules = BookRules(config, community, start)
        for o in orders:
            if o.interval_start_ms == start:
                rules.admit(o)


@given(net=st.floats(-1e5, 1e5, allow_nan=False), spread=st.floats(0, 1e5, allow_nan=False),
       more=st.floats(0, 1e5, allow_nan=False))
def test_confidence_falls_with_spread(net, spread, more):
    c = confidence(net, spread)
    assert 0.0 <= c <= 1.0
    assert confidence(net, spread + more) <= c


@st.composite
def appliances_and_overrides(draw):
    apps = []
    for i in range(draw(st.integers(1, 4))):
        start = 15 * draw(st.integers(0, 95))
        length = 15 * draw(st.integers(1, 96))
        required = 15 * draw(st.integers(0, length // 15))
        apps.append(Appliance(f"a{i}", draw(st.integers(1, 7000)), start,
                              (start + length) % 1440, required, f"r{i}"))
    overrides = []
    for _ in range(draw(st.integers(0, 4))):
        app = draw(st.sampled_from(apps))
        start = DAY0_MS + SLOT_MS * draw(st.integers(0, 2 * SLOTS - 1))
        end = start + SLOT_MS * draw(st.integers(1, 40))
        overrides.append(Override(app.name, draw(st.booleans()), start, end))
    return apps, overrides


@settings(max_examples=200, deadline=None)
@given(case=appliances_and_overrides(),
       surplus=st.lists(st.floats(0, 3000, allow_nan=False), min_size=48, max_size=48),
       import_price=st.lists(st.integers(0, 60), min_size=48, max_size=48))
def test_flexible_loads_get_required_hours_inside_windows(case, surplus, import_price):
    apps, overrides = case
    plans = schedule(apps, DAY0_MS, DAY0_MS, np.repeat(surplus, 4),
                     np.repeat(import_price, 4).astype(float), np.full(2 * SLOTS, 4.0), overrides)
    assert {p.appliance for p in plans} == {a.name for a in apps}
    for plan in plans:
        app = next(a for a in apps if a.name == plan.appliance)
        window = set(range(plan.window_start_ms, plan.window_end_ms, SLOT_MS))
        forced = {}
        for o in overrides:
            if o.appliance == app.name:
                for t in window:
                    if o.covers(t):
                        forced[t] = o.on
        on = set(plan.on_slot_ms)
        assert len(on) == len(plan.on_slot_ms)
        assert on <= window                                     # inside the window
        assert not any(forced.get(t) is False for t in on)      # never against "off"
        assert {t for t, v in forced.items() if v} <= on        # "on" is kept and counted
        allowed = len(window) - sum(1 for v in forced.values() if v is False)
        if allowed >= app.required_slots:  # feasible: exactly the required time (or what the
            assert len(on) == max(app.required_slots, sum(forced.values()))  # owner forced on)
        else:
            assert len(on) == allowed
        assert plan.shortfall_slots == max(app.required_slots - allowed, 0)
