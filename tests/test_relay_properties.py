"""Property tests of the relay rules over random sequences of events (CPython only).

The invariants are checked on the simulated pin's recorded history, with each write attributed by
this harness (not by the relay's own bookkeeping) to what caused it:
  boot   - start() (the power-up state; nothing is known from before boot)
  timed  - the timed rules (auto-off, fail-safe) running at the start of any call, or link changes
  trip   - an over-limit measurement in on_measurement
  cmd / manual - the command or button press itself
Writes are "timed" exactly when a deep copy of the relay, ticked at the same time, writes them too.

Invariants (docs/RELAYS.md):
  I1 min times: every transition that is not boot or trip comes >= min_on_ms after the previous
     transition to on (when it switches off), >= min_off_ms after the previous one to off or boot.
  I2 rate: every transition that is not boot or trip has fewer than max_switches transitions of any
     kind (boot and trips included) in the window_ms before it.
  I3 trip: an over-limit measurement leaves the pin off and the relay latched within that call
     (and returns the reason unless the relay was latched already);
     the latch then blocks every switch-on but an explicit "on", accepted only once
     trip_cooldown_ms have passed since the last over-limit reading (or boot, for a saved latch).
  I4 fail-safe: with the link down since t for link_lost_ms + max(min_on_ms, min_off_ms, window_ms),
     every call leaves the pin in the fail-safe state (off instead of on while latched).
  I5 results: every command and button press returns one dict, ok with no reason or a known reason
     (never "manual_override" for the button); its state is the pin's; a rejected one writes nothing
     beyond what tick() alone would write.
  I6 retry_after_ms is exact: with nothing else happening the same request is still refused 1 ms
     earlier and accepted at that time (or refused for "failsafe" if the link timed out meanwhile).
  I7 auto-off: on for max(auto_off_ms, min_on_ms, window_ms) always ends in off unless fail-safe "on".
"""
import copy

from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.control import currently_in_test_context, event as _event

from ghnode.hal_sim import SimRelayPin
from ghnode.relay import FAILSAFE, POWER_UP, REASONS, Relay

TIMED_REASONS = ("manual_override", "tripped", "min_on_time", "min_off_time", "rate_limit")

configs = st.fixed_dictionaries({
    "power_up": st.sampled_from(POWER_UP),
    "min_on_ms": st.sampled_from([0, 300, 2000]),
    "min_off_ms": st.sampled_from([0, 300, 2000]),
    "max_switches": st.integers(0, 4),
    "window_ms": st.sampled_from([0, 1000, 8000]),
    "auto_off_ms": st.sampled_from([0, 500, 4000]),
    "max_current_ma": st.sampled_from([0, 10000]),
    "max_power_w": st.sampled_from([0, 2300]),
    "trip_cooldown_ms": st.sampled_from([0, 1000, 5000]),
    "manual_hold_ms": st.sampled_from([0, 1500, 6000]),
    "link_lost_ms": st.sampled_from([0, 1000, 5000]),
    "failsafe": st.sampled_from(FAILSAFE),
})
saved_states = st.one_of(st.none(), st.fixed_dictionaries({
    "state": st.sampled_from(["on", "off"]),
    "tripped": st.sampled_from([None, "over_current", "over_power"]),
}))
wait = st.tuples(st.just("wait"), st.integers(0, 3000))
long_wait = st.tuples(st.just("wait"), st.integers(3000, 15000))  # past windows and link timeouts
cmd = st.tuples(st.just("cmd"), st.sampled_from(["on", "off", "toggle", "bogus"]))
# Readings within the limits used (10000 mA, 2300 W when enabled), and spikes that may cross them.
reading = st.tuples(st.just("measure"), st.integers(0, 10000), st.integers(-2300, 2300))
spike = st.tuples(st.just("measure"), st.integers(0, 20000), st.integers(-5000, 5000))
steps = st.lists(st.one_of(  # repeats weight the mix
    wait, wait, long_wait, cmd, cmd, cmd, reading, reading, spike,
    st.tuples(st.just("manual")),
    st.tuples(st.just("link"), st.booleans()),
    st.tuples(st.just("tick")),
), min_size=10, max_size=80)


def event(what):
    """Coverage counts for --hypothesis-show-statistics; a no-op in the plain tests below."""
    if currently_in_test_context():
        _event(what)


def transitions(writes):
    """[(t, on, kind)] where the output changed, from de-energised."""
    out, last = [], False
    for t, on, kind in writes:
        if on != last:
            out.append((t, on, kind))
            last = on
    return out


def over_limit(cfg, irms_ma, power_w):
    if cfg["max_current_ma"] and abs(irms_ma) > cfg["max_current_ma"]:
        return "over_current"
    if cfg["max_power_w"] and abs(power_w) > cfg["max_power_w"]:
        return "over_power"
    return None


def request(relay, step, now):
    return relay.manual_toggle(now) if step[0] == "manual" else relay.command(now, step[1], "c")


def check_result(res, pin):
    assert isinstance(res, dict)
    assert res["state"] == ("on" if pin.on else "off")
    if res["ok"] is True:
        assert set(res) == {"ok", "state", "cmd"}
    else:
        assert res["ok"] is False and res["reason"] in REASONS
        retry = res["retry_after_ms"]
        assert retry is None or (isinstance(retry, int) and retry > 0)
        if res["reason"] in ("min_on_time", "min_off_time", "rate_limit"):
            assert retry is not None  # None only where waiting alone cannot help


def check_retry_is_exact(relay, step, now, retry):
    for at, accepted in ((now + retry - 1, False), (now + retry, True)):
        twin = copy.deepcopy(relay)
        n = len(twin.pin.writes)
        twin.tick(at)
        if len(twin.pin.writes) != n:
            return  # something else switched the relay meanwhile: the promise no longer applies
        res = request(twin, step, at)
        event("I6 retry_after_ms checked")
        if accepted:
            assert res["ok"] or res["reason"] == "failsafe", (at, res)
        else:
            assert not res["ok"], (at, res)


def run(cfg, saved, plan, cls=Relay):
    pin = SimRelayPin()
    relay = cls(pin, **cfg).from_dict(saved)
    now = 0
    relay.start(now)
    writes = [(t, on, "boot") for t, on in pin.writes]
    latched = isinstance(saved, dict) and saved.get("tripped") is not None
    link_down_since = now
    last_over_ms = now  # a latch loaded from flash restarts its cool-down at boot
    rate_ms = cfg["window_ms"] if cfg["max_switches"] else 0
    settle_ms = max(cfg["min_on_ms"], cfg["min_off_ms"], rate_ms)
    for step in plan:
        kind = step[0]
        if kind == "wait":
            now += step[1]
            continue
        twin = copy.deepcopy(relay)
        twin.tick(now)
        timed = twin.pin.writes[len(pin.writes):]
        n0 = len(pin.writes)
        res = None
        if kind == "cmd" or kind == "manual":
            res = request(relay, step, now)
        elif kind == "measure":
            got = relay.on_measurement(now, step[1], step[2])
        elif kind == "link":
            relay.on_link(now, step[1])
            if step[1]:
                link_down_since = None
            elif link_down_since is None:
                link_down_since = now
        else:
            relay.tick(now)
        new = pin.writes[n0:]
        if kind == "link":
            own = []
            writes += [(t, on, "timed") for t, on in new]
        else:
            assert new[:len(timed)] == timed
            own = new[len(timed):]
            writes += [(t, on, "timed") for t, on in timed]
            writes += [(t, on, "trip" if kind == "measure" else kind) for t, on in own]
        assert len(own) <= 1 and all(t == now for t, on in own)

        if res is not None:  # I5, I6
            check_result(res, pin)
            event("result: %s" % (res.get("reason") or "ok"))
            if res["ok"]:
                if kind == "cmd" and step[1] == "on" and latched:  # I3: the reset needs the cool-down
                    assert now - last_over_ms >= cfg["trip_cooldown_ms"]
                    latched = False
                if kind == "cmd" and step[1] in ("on", "off"):
                    assert pin.on == (step[1] == "on")
            else:
                assert own == []
                assert not (kind == "manual" and res["reason"] in ("manual_override", "bad_action"))
                if res["reason"] in TIMED_REASONS and res["retry_after_ms"] is not None:
                    check_retry_is_exact(relay, step, now, res["retry_after_ms"])
        if kind == "measure":  # I3
            reason = over_limit(cfg, step[1], step[2])
            assert got == (None if latched else reason)  # reported once per trip, not per reading
            if reason:
                latched = True
                last_over_ms = now
                assert not pin.on and relay.tripped == reason
                event("I3 trip")
                assert own in ([], [(now, False)])
            else:
                assert own == []
        if kind == "tick":
            assert own == []
        assert latched == (relay.tripped is not None)
        if latched:
            assert not pin.on

        failsafe_due = (cfg["link_lost_ms"] and cfg["failsafe"] != "hold"
                        and link_down_since is not None
                        and now >= link_down_since + cfg["link_lost_ms"])
        if failsafe_due and now >= link_down_since + cfg["link_lost_ms"] + settle_ms:  # I4
            assert pin.on == (cfg["failsafe"] == "on" and not latched)
            event("I4 fail-safe state checked")
        hist = transitions(writes)
        if cfg["auto_off_ms"] and pin.on and not (failsafe_due and cfg["failsafe"] == "on"):  # I7
            t_on = hist[-1][0]
            assert now < t_on + max(cfg["auto_off_ms"], cfg["min_on_ms"], rate_ms)
            event("I7 auto-off pending checked")

    hist = transitions(writes)
    assert [on for _, on, _ in hist] == [i % 2 == 0 for i in range(len(hist))]  # writes mean changes
    for j, (t, on, kind) in enumerate(hist):
        if kind in ("boot", "trip"):
            continue
        prev_t = hist[j - 1][0] if j else 0  # boot starts the first off period
        assert t - prev_t >= (cfg["min_off_ms"] if on else cfg["min_on_ms"]), (j, hist)  # I1
        if cfg["max_switches"]:  # I2
            recent = [i for i in range(j) if hist[i][0] > t - cfg["window_ms"]]
            assert len(recent) < cfg["max_switches"], (j, hist)
            if len(recent) == cfg["max_switches"] - 1:
                event("I2 switch with the rate window one short of full")


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=configs, saved=saved_states, plan=steps)
def test_relay_invariants_hold_for_any_event_sequence(cfg, saved, plan):
    run(cfg, saved, plan)


# Only switching and faults (over max_current_ma=10000), so trips and a binding rate limit meet often.
fault = st.tuples(st.just("measure"), st.integers(10001, 20000), st.integers(-2300, 2300))
trip_steps = st.lists(st.one_of(wait, long_wait, st.just(("cmd", "on")), st.just(("cmd", "on")),
                                st.just(("cmd", "off")), fault), min_size=5, max_size=40)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=configs, plan=trip_steps, max_switches=st.integers(1, 3))
def test_trips_count_towards_the_rate_limit(cfg, plan, max_switches):
    """I1-I3 with the rate limit binding and trips quick to reset."""
    cfg = dict(cfg, max_switches=max_switches, window_ms=8000, trip_cooldown_ms=0,
               max_current_ma=10000, min_on_ms=0, min_off_ms=0, auto_off_ms=0, link_lost_ms=0)
    run(cfg, None, plan)


@settings(max_examples=300, deadline=None)
@given(cfg=configs, plan=steps, lost_ms=st.integers(0, 20000), failsafe=st.sampled_from(["off", "on"]))
def test_link_loss_always_reaches_the_failsafe_state(cfg, plan, lost_ms, failsafe):
    """I4 with the link certainly lost at the end: after the bound, every call sees the fail-safe."""
    cfg = dict(cfg, link_lost_ms=cfg["link_lost_ms"] or 1000, failsafe=failsafe)
    rate_ms = cfg["window_ms"] if cfg["max_switches"] else 0
    bound = cfg["link_lost_ms"] + max(cfg["min_on_ms"], cfg["min_off_ms"], rate_ms)
    plan = plan + [("link", False), ("wait", lost_ms), ("tick",), ("wait", bound), ("manual",),
                   ("cmd", "toggle"), ("tick",)]
    run(cfg, None, plan)


BASE = {"power_up": "off", "min_on_ms": 0, "min_off_ms": 0, "max_switches": 0, "window_ms": 0,
        "auto_off_ms": 0, "max_current_ma": 0, "max_power_w": 0, "trip_cooldown_ms": 0,
        "manual_hold_ms": 0, "link_lost_ms": 0, "failsafe": "hold"}


class IgnoresTimeRules(Relay):
    def _wait(self, now_ms):
        return None, 0


class NeverTrips(Relay):
    def on_measurement(self, now_ms, irms_ma, power_w):
        return None


def fails(cls, cfg, plan):
    try:
        run(dict(BASE, **cfg), None, plan, cls)
    except AssertionError:
        return True
    return False


def test_the_harness_is_not_vacuous():
    """Relays that break a rule fail the pin-history checks; the real one passes the same plans."""
    cases = [
        (IgnoresTimeRules, {"min_on_ms": 1000}, [("cmd", "on"), ("wait", 10), ("cmd", "off")]),
        (IgnoresTimeRules, {"min_off_ms": 1000}, [("cmd", "on")]),
        (IgnoresTimeRules, {"max_switches": 1, "window_ms": 1000},
         [("cmd", "on"), ("wait", 10), ("cmd", "off")]),
        (NeverTrips, {"max_power_w": 100}, [("cmd", "on"), ("measure", 0, 101)]),
    ]
    for cls, cfg, plan in cases:
        assert fails(cls, cfg, plan), (cls.__name__, cfg)
        assert not fails(Relay, cfg, plan), cfg
