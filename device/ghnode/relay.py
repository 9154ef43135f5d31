"""Smart-relay logic: a pure state machine per relay. Runs unchanged on MicroPython and CPython.

No I/O and no clock: every method takes `now_ms`, a monotonic millisecond count that never wraps
(the app accumulates time.ticks_diff; raw ticks_ms wraps after ~12 days). The relay drives its
output through `pin.write(now_ms, on)` (hal_esp32.RelayPin on a board, hal_sim.SimRelayPin
in tests) and writes only on a change, plus once in start() to set the power-up level.

Precedence, highest first: safety trip > fail-safe > manual override > remote command.
docs/RELAYS.md states every rule and the invariants tests/test_relay_properties.py checks.
"""

POWER_UP = ("off", "on", "restore")
FAILSAFE = ("off", "on", "hold")
ACTIONS = ("on", "off", "toggle")
# Every reason a command or button press can be refused for.
REASONS = ("bad_action", "failsafe", "manual_override", "tripped", "min_on_time", "min_off_time",
           "rate_limit", "unknown_relay")


def _ms(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError("relay config: %s must be an int >= 0, got %r" % (name, value))
    return value


class Relay:
    def __init__(self, pin=None, power_up="off", min_on_ms=0, min_off_ms=0, max_switches=0,
                 window_ms=60000, auto_off_ms=0, max_current_ma=0, max_power_w=0,
                 trip_cooldown_ms=60000, manual_hold_ms=3600000, link_lost_ms=0, failsafe="hold",
                 name=None):
        """0 disables a rule (max_switches, auto_off_ms, max_current_ma, max_power_w, link_lost_ms)."""
        if power_up not in POWER_UP:
            raise ValueError("relay config: power_up must be one of %s, got %r" % (POWER_UP, power_up))
        if failsafe not in FAILSAFE:
            raise ValueError("relay config: failsafe must be one of %s, got %r" % (FAILSAFE, failsafe))
        self.pin = pin
        self.name = name
        self.power_up = power_up
        self.failsafe = failsafe
        self.min_on_ms = _ms("min_on_ms", min_on_ms)
        self.min_off_ms = _ms("min_off_ms", min_off_ms)
        self.max_switches = _ms("max_switches", max_switches)
        self.window_ms = _ms("window_ms", window_ms)
        self.auto_off_ms = _ms("auto_off_ms", auto_off_ms)
        self.max_current_ma = _ms("max_current_ma", max_current_ma)
        self.max_power_w = _ms("max_power_w", max_power_w)
        self.trip_cooldown_ms = _ms("trip_cooldown_ms", trip_cooldown_ms)
        self.manual_hold_ms = _ms("manual_hold_ms", manual_hold_ms)
        self.link_lost_ms = _ms("link_lost_ms", link_lost_ms)
        self.on = False
        self.since_ms = 0
        self.cause = None           # what made the last switch: power_up, remote, manual, auto_off, ...
        self.tripped = None         # latched trip reason: "over_current" | "over_power"
        self.trip_ms = 0
        self.override_until_ms = 0  # remote commands refused before this time
        self.link_down_ms = None    # since when the gateway is unreachable; None while it is up
        self.switches = 0           # total since boot (contact wear)
        self._times = []            # times of the last max_switches switches, trips included
        self._saved_on = False
        self._now = None

    # --- persistence (the app does the file I/O) ---------------------------------------------
    def to_dict(self):
        """What survives a reboot: the last state (for power_up "restore") and the trip latch."""
        return {"state": "on" if self.on else "off", "tripped": self.tripped}

    def from_dict(self, d):
        """Load to_dict() output before start(). Anything malformed reads as off and not tripped."""
        if isinstance(d, dict):
            self._saved_on = d.get("state") == "on"
            t = d.get("tripped")
            self.tripped = t if t in ("over_current", "over_power") else None
        return self

    def start(self, now_ms):
        """Apply the power-up state. The link counts as down from now until on_link(now, True)."""
        self._now = now_ms
        self.since_ms = now_ms
        self.link_down_ms = now_ms
        on = self.power_up == "on" or (self.power_up == "restore" and self._saved_on)
        if on and not self.tripped:  # a latched trip survives reboots: never power up into a fault
            self._switch(now_ms, True, "power_up")
        else:
            self.cause = "power_up"
            if self.pin is not None:
                self.pin.write(now_ms, False)
        return self

    # --- inputs --------------------------------------------------------------------------------
    def tick(self, now_ms):
        """Run the timed rules (auto-off, fail-safe); return the cause of a switch made, else None."""
        return self._update(now_ms)[1]

    def command(self, now_ms, action, cmd_id=None):
        """A remote command "on" | "off" | "toggle": return exactly one result dict."""
        now_ms = self._update(now_ms)[0]
        if action not in ACTIONS:
            return self._result(cmd_id, "bad_action")
        target = (not self.on) if action == "toggle" else action == "on"
        return self._try(now_ms, target, True, action == "on", cmd_id, "remote")

    def manual_toggle(self, now_ms):
        """The local button: toggles and then holds off remote commands for manual_hold_ms."""
        now_ms = self._update(now_ms)[0]
        res = self._try(now_ms, not self.on, False, False, "manual", "manual")
        if res["ok"] and self.manual_hold_ms:
            self.override_until_ms = now_ms + self.manual_hold_ms
        return res

    def on_measurement(self, now_ms, irms_ma, power_w):
        """The CT reading of this circuit. Over a limit: off now and latch.

        Returns the trip reason when this reading tripped or latched the relay, None otherwise (also
        while already latched, so a lasting fault does not repeat the trip event every reading).
        """
        now_ms = self._update(now_ms)[0]
        reason = None
        if self.max_current_ma and irms_ma is not None and abs(irms_ma) > self.max_current_ma:
            reason = "over_current"
        elif self.max_power_w and power_w is not None and abs(power_w) > self.max_power_w:
            reason = "over_power"
        if reason is None:
            return None
        # Latch even when already off: current on an open circuit means welded contacts or a wiring
        # fault, so it must not be switched on again without an explicit reset. Refreshing trip_ms
        # restarts the cool-down while the fault persists.
        was_latched = self.tripped is not None
        self.tripped = reason
        self.trip_ms = now_ms
        if self.on:
            self._switch(now_ms, False, reason)  # exempt from min-on and rate limit, but counted
        return None if was_latched else reason

    def on_link(self, now_ms, up):
        """Gateway reachability. Down for link_lost_ms activates the fail-safe until it is back."""
        if up:
            self.link_down_ms = None  # back before we acted on it: no pointless last-moment switch
            return self.tick(now_ms)
        cause = self.tick(now_ms)
        if self.link_down_ms is None:
            self.link_down_ms = self._now
        return cause

    # --- reading -------------------------------------------------------------------------------
    def snapshot(self):
        """Telemetry as of the last call (ints, strings, bools, None: wire-format safe)."""
        now = self._now or 0
        return {
            "state": "on" if self.on else "off",
            "since_ms": self.since_ms,
            "cause": self.cause,
            "tripped": self.tripped,
            "override_ms": max(0, self.override_until_ms - now),
            "link_up": self.link_down_ms is None,
            "failsafe": self._failsafe_target(now) is not None,
            "switches": self.switches,
            "recent_switches": len([t for t in self._times if t > now - self.window_ms]),
        }

    # --- internals -----------------------------------------------------------------------------
    def _update(self, now_ms):
        if self._now is None:
            raise RuntimeError("relay: call start(now_ms) first")
        if now_ms < self._now:
            now_ms = self._now  # a clock running backwards would shorten min times: clamp
        self._now = now_ms
        target = self._failsafe_target(now_ms)
        if target is not None:
            # Pending until min times and rate limit allow it; a trip latch blocks fail-safe "on".
            if target != self.on and not (target and self.tripped) and not self._wait(now_ms)[1]:
                self._switch(now_ms, target, "failsafe")
                return now_ms, "failsafe"
        elif (self.on and self.auto_off_ms and now_ms - self.since_ms >= self.auto_off_ms
              and not self._wait(now_ms)[1]):
            self._switch(now_ms, False, "auto_off")
            return now_ms, "auto_off"
        return now_ms, None

    def _failsafe_target(self, now_ms):
        """The state the fail-safe imposes now (True/False), or None while it does not apply."""
        if (self.link_down_ms is None or self.failsafe == "hold" or not self.link_lost_ms
                or now_ms - self.link_down_ms < self.link_lost_ms):
            return None
        return self.failsafe == "on"

    def _wait(self, now_ms):
        """(reason, ms) until min on/off time and rate limit allow leaving the current state."""
        reason = None
        wait = self.since_ms + (self.min_on_ms if self.on else self.min_off_ms) - now_ms
        if wait > 0:
            reason = "min_on_time" if self.on else "min_off_time"
        if self.max_switches and len(self._times) >= self.max_switches:
            rate = self._times[0] + self.window_ms - now_ms
            if rate > 0:
                reason = reason or "rate_limit"
                wait = max(wait, rate)
        return reason, max(0, wait)

    def _try(self, now_ms, target, remote, explicit_on, cmd_id, cause):
        if self._failsafe_target(now_ms) is not None:
            return self._result(cmd_id, "failsafe")
        reason = None
        retry = 0
        if remote and self.override_until_ms > now_ms:
            reason = "manual_override"
            retry = self.override_until_ms - now_ms
        if target == self.on:
            return self._result(cmd_id, reason, retry)
        if target and self.tripped:
            if not explicit_on:
                return self._result(cmd_id, reason or "tripped", None)  # only an explicit "on" resets
            cool = self.trip_ms + self.trip_cooldown_ms - now_ms
            if cool > 0:
                reason = reason or "tripped"
                retry = max(retry, cool)
        why, wait = self._wait(now_ms)
        if why:
            reason = reason or why
            retry = max(retry, wait)
        if reason:
            # retry_after_ms covers every timed blocker, not only the one named.
            return self._result(cmd_id, reason, retry)
        self.tripped = None  # the explicit "on" after the cool-down is the reset
        self._switch(now_ms, target, cause)
        return self._result(cmd_id)

    def _result(self, cmd_id, reason=None, retry_after_ms=None):
        state = "on" if self.on else "off"
        if reason is None:
            return {"ok": True, "state": state, "cmd": cmd_id}
        return {"ok": False, "state": state, "reason": reason, "retry_after_ms": retry_after_ms,
                "cmd": cmd_id}

    def _switch(self, now_ms, on, cause):
        self.on = on
        self.since_ms = now_ms
        self.cause = cause
        self.switches += 1
        if self.max_switches:
            self._times.append(now_ms)
            if len(self._times) > self.max_switches:
                self._times.pop(0)
        if self.pin is not None:
            self.pin.write(now_ms, on)


class RelayBank:
    """Several relays keyed by index (as in the wire format's `relay` field) or name."""

    def __init__(self, relays):
        self.relays = relays  # {key: Relay}

    def start(self, now_ms, saved=None):
        saved = saved if isinstance(saved, dict) else {}
        for key, r in self.relays.items():
            r.from_dict(saved.get(str(key))).start(now_ms)
        return self

    def command(self, now_ms, key, action, cmd_id=None):
        r = self.relays.get(key)
        if r is None:
            return {"ok": False, "state": None, "reason": "unknown_relay", "retry_after_ms": None,
                    "cmd": cmd_id}
        return r.command(now_ms, action, cmd_id)

    def tick(self, now_ms):
        """{key: cause} of the relays that switched."""
        out = {}
        for key, r in self.relays.items():
            c = r.tick(now_ms)
            if c:
                out[key] = c
        return out

    def on_link(self, now_ms, up):
        for r in self.relays.values():
            r.on_link(now_ms, up)

    def snapshot(self):
        return dict((key, r.snapshot()) for key, r in self.relays.items())

    def to_dict(self):
        """JSON-ready: keys become strings."""
        return dict((str(key), r.to_dict()) for key, r in self.relays.items())
