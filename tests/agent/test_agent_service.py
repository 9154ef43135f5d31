"""The agent service end to end: shipped model -> plan -> orders the market admits -> relays."""
import pytest

from gridhive.agent import TradingAgent
from gridhive.agent.flex import SLOT_MS
from gridhive.forecast import Forecaster, LiteModel
from gridhive.forecast.features import HISTORY_SLOTS
from gridhive.forecast.samples import load_blocks
from gridhive.forecast.weather import DAY_MS
from gridhive.market import Community, MarketConfig, Member, OrderBook, Side

CONFIG = MarketConfig(feed_in_minor_per_kwh=4, retail_minor_per_kwh=21,
                      gate_closure_lead_ms=900_000)


@pytest.fixture(scope="module")
def home():
    blocks = load_blocks()
    k = next(i for i in range(len(blocks.household_id)) if blocks.pv_w[i].max() > 2000)
    return blocks, k


def make_agent(blocks, k, relay_log, budget=None):
    forecaster = Forecaster(blocks.site[k], LiteModel())
    return TradingAgent("h1", forecaster, CONFIG, lambda relay, on: relay_log.append((relay, on)),
                        daily_budget_milli_minor=budget)


def test_plan_orders_are_admitted_and_bounded(home):
    blocks, k = home
    day = int(blocks.start_ms[k]) + 7 * DAY_MS
    agent = make_agent(blocks, k, [], budget=200_000)
    now = day - 3_600_000
    plan = agent.plan_day(day, blocks.load_w[k, :HISTORY_SLOTS], blocks.pv_w[k, :HISTORY_SLOTS],
                          now)
    assert plan.forecast.method == "model" and plan.orders
    community = Community((Member("h1", "f1", has_generation=True),))
    for order in plan.orders:
        book = OrderBook(CONFIG, community, order.interval_start_ms)
        book.submit(order)
    spent = sum(o.energy_wh * o.price_minor_per_kwh for o in plan.orders if o.side == Side.BID)
    assert spent <= 200_000
    net_wh = (plan.forecast.load_w + plan.flex_w - plan.forecast.pv_w) / 4
    for o in plan.orders:
        slot = (o.interval_start_ms - day) // SLOT_MS
        if o.side == Side.OFFER:
            assert o.energy_wh <= -net_wh[slot]
    # every appliance of the table got its hours
    assert all(w.shortfall_slots == 0 for w in plan.windows)
    assert plan.flex_w.sum() > 0


def test_relays_follow_the_plan_but_never_override_the_homeowner(home):
    blocks, k = home
    day = int(blocks.start_ms[k]) + 7 * DAY_MS
    log = []
    agent = make_agent(blocks, k, log)
    pump_slots = sorted(next(w for w in agent.plan_day(
        day, blocks.load_w[k, :HISTORY_SLOTS], blocks.pv_w[k, :HISTORY_SLOTS], day - DAY_MS
    ).windows if w.appliance == "pool_pump").on_slot_ms)
    first_on = pump_slots[0]
    agent.tick(first_on - SLOT_MS)
    log.clear()
    agent.tick(first_on + 60_000)
    assert ("relay-pool-pump", True) in log
    # the homeowner switches the pump off for two hours: the agent stays silent on it ...
    agent.set_override("pool_pump", False, first_on + 120_000, first_on + 2 * 3_600_000)
    log.clear()
    for t in range(first_on + 120_000, first_on + 2 * 3_600_000, SLOT_MS // 3):
        agent.tick(t)
    assert not [c for c in log if c[0] == "relay-pool-pump"]
    # ... and takes over again when the override ends
    after = first_on + 2 * 3_600_000
    agent.tick(after)
    want = any(after - after % SLOT_MS == t for t in pump_slots)
    assert ("relay-pool-pump", want) in log


def test_replanning_replaces_the_plan(home):
    blocks, k = home
    day = int(blocks.start_ms[k]) + 7 * DAY_MS
    agent = make_agent(blocks, k, [])
    history = blocks.load_w[k, :HISTORY_SLOTS], blocks.pv_w[k, :HISTORY_SLOTS]
    agent.plan_day(day, *history, day - DAY_MS)
    agent.set_override("pool_pump", False, day + 12 * 3_600_000, day + 13 * 3_600_000)
    agent.plan_day(day, *history, day - DAY_MS + 60_000)
    pump = agent.on_slot_ms["pool_pump"]
    assert len(pump) == 32
    assert all(not day + 12 * 3_600_000 <= t < day + 13 * 3_600_000 for t in pump)


def test_unknown_override_is_refused(home):
    blocks, k = home
    with pytest.raises(ValueError, match="unknown appliance"):
        make_agent(blocks, k, []).set_override("sauna", True, 0, 1)


def test_a_new_home_trades_on_the_fallback(home):
    blocks, k = home
    day = int(blocks.start_ms[k]) + 7 * DAY_MS
    agent = make_agent(blocks, k, [])
    plan = agent.plan_day(day, blocks.load_w[k, HISTORY_SLOTS - 2 * 96:HISTORY_SLOTS],
                          blocks.pv_w[k, HISTORY_SLOTS - 2 * 96:HISTORY_SLOTS], day - DAY_MS)
    assert plan.forecast.method == "seasonal_naive"
    # the fallback's wide band keeps prices off the tariffs where nothing certain is scheduled
    uncertain = [o for o in plan.orders
                 if plan.flex_w[(o.interval_start_ms - day) // SLOT_MS] == 0]
    assert uncertain
    assert all(CONFIG.feed_in_minor_per_kwh < o.price_minor_per_kwh < CONFIG.retail_minor_per_kwh
               for o in uncertain)
