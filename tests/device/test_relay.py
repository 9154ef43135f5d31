"""Relay rules, scenario by scenario. Runs unchanged on CPython (pytest) and MicroPython (mpyrun)."""
import json

from devtest import make_tmpdir, raises
from ghnode.hal_sim import SimRelayPin
from ghnode.relay import REASONS, Relay, RelayBank

T0 = 1000


def make(start=T0, link_up=True, saved=None, **cfg):
    pin = SimRelayPin()
    r = Relay(pin, **cfg)
    if saved is not None:
        r.from_dict(saved)
    r.start(start)
    if link_up:
        r.on_link(start, True)
    return r, pin


def rejected(res, reason, retry=None):
    assert res["ok"] is False, res
    assert res["reason"] == reason, res
    if retry is not None:
        assert res["retry_after_ms"] == retry, res


# --- power-up -------------------------------------------------------------------------------


def test_power_up_off_writes_off_once():
    r, pin = make()
    assert r.snapshot()["state"] == "off"
    assert pin.writes == [(T0, False)]
    assert pin.transitions() == []


def test_power_up_on():
    r, pin = make(power_up="on")
    assert r.on and pin.on
    assert pin.transitions() == [(T0, True)]
    assert r.snapshot()["cause"] == "power_up"


def test_power_up_restore_uses_saved_state():
    r, pin = make(power_up="restore", saved={"state": "on", "tripped": None})
    assert pin.on
    r, pin = make(power_up="restore", saved={"state": "off"})
    assert not pin.on
    r, pin = make(power_up="restore")  # nothing saved yet
    assert not pin.on


def test_restore_ignores_garbage():
    for bad in (None, 3, "on", [], {"state": 1}, {"tripped": "melted"}):
        r, pin = make(power_up="restore", saved=bad)
        assert not pin.on
        assert r.tripped is None


def test_trip_latch_survives_reboot_even_with_power_up_on():
    r, pin = make(power_up="on", saved={"state": "on", "tripped": "over_current"})
    assert not pin.on
    assert r.snapshot()["tripped"] == "over_current"


def test_to_dict_round_trips_through_a_file():
    r, pin = make(max_current_ma=1000)
    r.command(T0 + 1, "on", 1)
    r.on_measurement(T0 + 2, 5000, 0)
    path = make_tmpdir("relay") + "/relay.json"
    with open(path, "w") as f:
        json.dump(r.to_dict(), f)
    with open(path) as f:
        saved = json.load(f)
    assert saved == {"state": "off", "tripped": "over_current"}
    r2, pin2 = make(power_up="restore", saved=saved, max_current_ma=1000)
    assert r2.tripped == "over_current" and not pin2.on


# --- commands -------------------------------------------------------------------------------


def test_command_results_have_the_documented_shape():
    r, pin = make()
    assert r.command(T0, "on", 7) == {"ok": True, "state": "on", "cmd": 7}
    assert r.command(T0, "on", 8) == {"ok": True, "state": "on", "cmd": 8}  # idempotent, no write
    assert r.command(T0, "toggle", 9) == {"ok": True, "state": "off", "cmd": 9}
    res = r.command(T0, "explode", 10)
    assert res == {"ok": False, "state": "off", "reason": "bad_action", "retry_after_ms": None, "cmd": 10}
    assert pin.writes == [(T0, False), (T0, True), (T0, False)]
    assert "bad_action" in REASONS


def test_min_on_time():
    r, pin = make(min_on_ms=5000)
    assert r.command(T0, "on")["ok"]
    rejected(r.command(T0 + 1000, "off"), "min_on_time", 4000)
    rejected(r.command(T0 + 4999, "toggle"), "min_on_time", 1)
    assert r.command(T0 + 5000, "off")["ok"]
    assert pin.transitions() == [(T0, True), (T0 + 5000, False)]


def test_min_off_time_counts_from_boot():
    r, pin = make(min_off_ms=3000)
    rejected(r.command(T0 + 1000, "on"), "min_off_time", 2000)
    assert r.command(T0 + 3000, "on")["ok"]
    assert r.command(T0 + 3000, "off")["ok"]
    rejected(r.command(T0 + 5999, "on"), "min_off_time", 1)
    assert r.command(T0 + 6000, "on")["ok"]


def test_rate_limit_rolling_window():
    r, pin = make(max_switches=3, window_ms=10000)
    for i, a in enumerate(("on", "off", "on")):
        assert r.command(T0 + i * 1000, a)["ok"]
    rejected(r.command(T0 + 5000, "off"), "rate_limit", 5000)
    assert r.command(T0 + 10000, "off")["ok"]  # the first switch left the window
    rejected(r.command(T0 + 10500, "on"), "rate_limit", 500)
    assert r.snapshot()["recent_switches"] == 3
    assert r.snapshot()["switches"] == 4


def test_rate_limit_of_one_switch():
    r, pin = make(max_switches=1, window_ms=5000)
    assert r.command(T0, "on")["ok"]
    rejected(r.command(T0 + 1, "off"), "rate_limit", 4999)
    assert r.command(T0 + 5000, "off")["ok"]


def test_retry_after_covers_every_timed_blocker():
    r, pin = make(start=0, min_off_ms=1000, max_switches=2, window_ms=20000)
    r.command(T0, "on")
    r.command(T0, "off")
    res = r.command(T0 + 500, "on")
    rejected(res, "min_off_time", 19500)  # named for min-off, but the rate limit holds it longer
    rejected(r.command(T0 + 1000, "on"), "rate_limit", 19000)
    assert r.command(T0 + 20000, "on")["ok"]


# --- auto-off -------------------------------------------------------------------------------


def test_auto_off_after_switch_on():
    r, pin = make(auto_off_ms=60000)
    r.command(T0, "on")
    assert r.tick(T0 + 59999) is None
    assert r.tick(T0 + 60000) == "auto_off"
    assert not pin.on and r.snapshot()["cause"] == "auto_off"
    assert r.tick(T0 + 70000) is None


def test_auto_off_restarts_on_each_switch_on_and_respects_min_on():
    r, pin = make(auto_off_ms=1000, min_on_ms=5000)
    r.command(T0, "on")
    assert r.tick(T0 + 1000) is None  # min on time wins
    assert r.tick(T0 + 5000) == "auto_off"
    r.manual_toggle(T0 + 6000)
    assert r.tick(T0 + 10999) is None
    assert r.tick(T0 + 11000) == "auto_off"


def test_auto_off_waits_for_the_rate_limit():
    r, pin = make(auto_off_ms=1000, max_switches=2, window_ms=10000)
    r.command(T0, "on")
    r.command(T0, "off")
    assert r.command(T0 + 10000, "on")["ok"]
    assert r.tick(T0 + 11000) == "auto_off"
    r, pin = make(auto_off_ms=1000, max_switches=3, window_ms=10000)
    r.command(T0, "on")
    r.command(T0, "off")
    r.command(T0, "on")
    assert r.tick(T0 + 1000) is None and pin.on  # a 4th switch within 10 s would break the limit
    assert r.tick(T0 + 10000) == "auto_off"


def test_auto_off_runs_inside_other_calls_too():
    r, pin = make(auto_off_ms=1000)
    r.command(T0, "on")
    assert r.command(T0 + 2000, "toggle")["state"] == "on"  # auto-off at 2000, then toggled on
    assert pin.transitions() == [(T0, True), (T0 + 2000, False), (T0 + 2000, True)]


# --- safety trips -----------------------------------------------------------------------------


def test_over_current_trips_at_once_despite_min_on_and_rate_limit():
    r, pin = make(max_current_ma=16000, min_on_ms=60000, max_switches=1, window_ms=60000)
    r.command(T0, "on")
    assert r.on_measurement(T0 + 10, 16000, 3000) is None  # at the limit is fine
    assert r.on_measurement(T0 + 20, 16001, 3000) == "over_current"
    assert not pin.on
    assert pin.transitions()[-1] == (T0 + 20, False)
    snap = r.snapshot()
    assert snap["tripped"] == "over_current" and snap["cause"] == "over_current"


def test_over_power_uses_magnitude():
    r, pin = make(max_power_w=3680)
    r.command(T0, "on")
    assert r.on_measurement(T0 + 1, 0, -3681) == "over_power"  # export direction counts too
    assert not pin.on


def test_zero_limits_are_disabled_and_none_readings_are_skipped():
    r, pin = make()
    r.command(T0, "on")
    assert r.on_measurement(T0 + 1, 10 ** 6, 10 ** 6) is None
    r, pin = make(max_current_ma=100, max_power_w=100)
    r.command(T0, "on")
    assert r.on_measurement(T0 + 1, None, None) is None
    assert pin.on


def test_trip_latches_until_explicit_on_after_cool_down():
    r, pin = make(max_current_ma=1000, trip_cooldown_ms=30000)
    r.command(T0, "on")
    r.on_measurement(T0 + 100, 2000, 0)
    rejected(r.command(T0 + 200, "on", 5), "tripped", 29900)
    rejected(r.command(T0 + 40000, "toggle"), "tripped")  # a toggle never resets
    rejected(r.manual_toggle(T0 + 40000), "tripped")      # nor does the button
    assert r.command(T0 + 40000, "off")["ok"]              # already off: fine
    assert r.tripped == "over_current"
    assert r.command(T0 + 30100, "on")["ok"]
    assert r.tripped is None and pin.on


def test_fault_on_an_open_circuit_latches_and_restarts_cool_down():
    r, pin = make(max_current_ma=1000, trip_cooldown_ms=1000)
    assert r.on_measurement(T0, 5000, 0) == "over_current"
    assert pin.transitions() == []
    assert r.on_measurement(T0 + 900, 5000, 0) is None  # already latched: no repeated trip event
    rejected(r.command(T0 + 1500, "on"), "tripped", 400)


def test_trip_counts_towards_the_rate_limit_and_min_off():
    r, pin = make(start=0, max_current_ma=1000, trip_cooldown_ms=0, min_off_ms=500, max_switches=2,
                  window_ms=10000)
    r.command(T0, "on")
    r.on_measurement(T0 + 100, 9999, 0)
    rejected(r.command(T0 + 200, "on"), "min_off_time", 9800)
    rejected(r.command(T0 + 600, "on"), "rate_limit", 9400)
    assert r.command(T0 + 10000, "on")["ok"]


# --- manual override ----------------------------------------------------------------------------


def test_manual_toggle_holds_off_remote_commands():
    r, pin = make(manual_hold_ms=60000)
    res = r.manual_toggle(T0)
    assert res == {"ok": True, "state": "on", "cmd": "manual"}
    rejected(r.command(T0 + 1000, "off", 3), "manual_override", 59000)
    rejected(r.command(T0 + 1000, "on", 4), "manual_override", 59000)
    assert r.snapshot()["override_ms"] == 59000
    assert r.manual_toggle(T0 + 2000)["state"] == "off"  # button vs button: fine, hold restarts
    rejected(r.command(T0 + 61999, "on"), "manual_override", 1)
    assert r.command(T0 + 62000, "on")["ok"]


def test_manual_toggle_obeys_min_times_and_rate():
    r, pin = make(min_on_ms=5000, manual_hold_ms=0)
    r.manual_toggle(T0)
    rejected(r.manual_toggle(T0 + 100), "min_on_time", 4900)
    assert pin.on
    assert r.command(T0 + 100, "on")["ok"]  # hold 0: remote commands right away


def test_rejected_button_press_starts_no_override():
    r, pin = make(min_off_ms=5000, manual_hold_ms=60000)
    rejected(r.manual_toggle(T0), "min_off_time")
    assert r.snapshot()["override_ms"] == 0
    assert r.command(T0 + 5000, "on")["ok"]


def test_trip_beats_manual_override():
    r, pin = make(max_power_w=2000, manual_hold_ms=60000)
    r.manual_toggle(T0)
    assert r.on_measurement(T0 + 10, 0, 2500) == "over_power"
    assert not pin.on


# --- fail-safe ----------------------------------------------------------------------------------


def test_failsafe_off_after_link_lost():
    r, pin = make(link_lost_ms=300000, failsafe="off")
    r.command(T0, "on")
    r.on_link(T0 + 1000, False)
    assert r.tick(T0 + 1000 + 299999) is None and pin.on
    assert r.tick(T0 + 301000) == "failsafe"
    assert not pin.on and r.snapshot()["failsafe"]
    rejected(r.command(T0 + 302000, "on"), "failsafe")
    rejected(r.manual_toggle(T0 + 302000), "failsafe")
    r.on_link(T0 + 303000, True)  # released; the state stays until someone changes it
    assert not pin.on and not r.snapshot()["failsafe"]
    assert r.command(T0 + 303000, "on")["ok"]


def test_link_counts_as_down_from_boot():
    r, pin = make(power_up="on", link_up=False, link_lost_ms=1000, failsafe="off")
    assert r.tick(T0 + 1000) == "failsafe"


def test_repeated_link_down_keeps_the_first_time():
    r, pin = make(power_up="on", link_lost_ms=1000, failsafe="off")
    r.on_link(T0, False)
    r.on_link(T0 + 900, False)
    assert r.tick(T0 + 1000) == "failsafe"


def test_link_back_before_timeout_does_nothing():
    r, pin = make(power_up="on", link_lost_ms=1000, failsafe="off")
    r.on_link(T0, False)
    r.on_link(T0 + 5000, True)  # nobody ticked meanwhile: no last-moment switch
    assert pin.on and pin.transitions() == [(T0, True)]


def test_failsafe_on_waits_for_min_off_and_beats_manual():
    r, pin = make(power_up="off", min_off_ms=10000, link_lost_ms=1000, failsafe="on",
                  manual_hold_ms=60000)
    r.on_link(T0, False)
    assert r.tick(T0 + 1000) is None  # pending: min off time since boot
    rejected(r.manual_toggle(T0 + 2000), "failsafe")
    assert r.tick(T0 + 10000) == "failsafe"
    assert pin.on
    assert r.tick(T0 + 99999) is None and pin.on


def test_failsafe_on_suspends_auto_off_until_link_returns():
    r, pin = make(power_up="on", auto_off_ms=1000, link_lost_ms=500, failsafe="on")
    r.on_link(T0, False)
    assert r.tick(T0 + 5000) is None and pin.on
    r.on_link(T0 + 6000, True)
    assert not pin.on and r.snapshot()["cause"] == "auto_off"


def test_trip_beats_failsafe_on():
    r, pin = make(power_up="on", max_current_ma=1000, trip_cooldown_ms=0, link_lost_ms=500,
                  failsafe="on")
    r.on_link(T0, False)
    r.on_measurement(T0 + 600, 2000, 0)
    assert r.tick(T0 + 100000) is None
    assert not pin.on and r.tripped == "over_current"


def test_failsafe_hold_changes_nothing_and_the_button_works():
    r, pin = make(power_up="on", link_lost_ms=1000, failsafe="hold")
    r.on_link(T0, False)
    assert r.tick(T0 + 10000) is None and pin.on
    assert not r.snapshot()["failsafe"]
    assert r.manual_toggle(T0 + 10000)["ok"]


def test_link_lost_zero_disables_failsafe():
    r, pin = make(power_up="on", link_lost_ms=0, failsafe="off")
    r.on_link(T0, False)
    assert r.tick(T0 + 10 ** 9) is None and pin.on


# --- misc ---------------------------------------------------------------------------------------


def test_clock_running_backwards_is_clamped():
    r, pin = make(min_on_ms=1000)
    r.command(T0 + 5000, "on")
    rejected(r.command(T0, "off"), "min_on_time", 1000)
    assert r.command(T0 + 6000, "off")["ok"]


def test_bad_config_names_the_key():
    e = raises(ValueError, Relay, None, power_up="maybe")
    assert "power_up" in str(e)
    e = raises(ValueError, Relay, None, failsafe="explode")
    assert "failsafe" in str(e)
    e = raises(ValueError, Relay, None, min_on_ms=-1)
    assert "min_on_ms" in str(e)
    e = raises(ValueError, Relay, None, max_power_w=1.5)
    assert "max_power_w" in str(e)


def test_calls_before_start_fail_loudly():
    raises(RuntimeError, Relay().command, 0, "on")


def test_relay_without_pin():
    r = Relay(power_up="on").start(0)
    assert r.command(1, "off")["ok"] and not r.on


def test_active_low_sim_pin():
    pin = SimRelayPin(active_low=True)
    assert pin.level == 1 and not pin.on
    r = Relay(pin, power_up="on").start(0)
    assert pin.level == 0 and pin.on
    r.command(1, "off")
    assert pin.level == 1


def test_bank():
    a, b = SimRelayPin(), SimRelayPin()
    bank = RelayBank({0: Relay(a, power_up="restore"), 1: Relay(b, auto_off_ms=100)})
    bank.start(0, {"0": {"state": "on"}})
    assert a.on and not b.on
    res = bank.command(1, 9, "on", 42)
    assert res["ok"] is False and res["reason"] == "unknown_relay" and res["cmd"] == 42
    assert bank.command(1, 1, "on", 43)["ok"]
    assert bank.tick(101) == {1: "auto_off"}
    assert bank.to_dict() == {"0": {"state": "on", "tripped": None}, "1": {"state": "off", "tripped": None}}
    assert bank.snapshot()[0]["state"] == "on"
    bank.on_link(200, True)
    assert bank.snapshot()[1]["link_up"]
