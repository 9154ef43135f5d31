"""A simulated board: the node app runs on a host (and under MicroPython) without hardware.

ADC inputs are hal_sim.SimADC objects on one shared sampling clock (set `board.adc(pin).wave` to
change what a CT sees), relay outputs are hal_sim_relay.SimRelayPin, flash is a directory, and
time is the host's monotonic clock unless a test passes its own.
"""
import time

from .hal_sim import SimADC, SimClock
from .hal_sim_net import WiFi
from .hal_sim_relay import SimRelayPin


def _host_ticks_ms():
    if hasattr(time, "ticks_ms"):
        return time.ticks_ms()
    return int(time.monotonic() * 1000)


def _host_ticks_diff(a, b):
    if hasattr(time, "ticks_diff"):
        return time.ticks_diff(a, b)
    return a - b


class SimWDT:
    """Records feeds; `expired(now_ms)` tells whether a real watchdog would have reset the board."""

    def __init__(self, board, timeout_ms):
        self.board = board
        self.timeout_ms = timeout_ms
        self.feeds = 0
        self.last_feed_ms = board.ticks_ms()

    def feed(self):
        self.feeds += 1
        self.last_feed_ms = self.board.ticks_ms()

    def expired(self):
        return self.board.ticks_diff(self.board.ticks_ms(), self.last_feed_ms) > self.timeout_ms


class SimBoard:
    def __init__(self, root, ticks_ms=None, unix_ms=None, reset_cause="power_on", log=None):
        self.root = root
        # 5 us per ticks_us() call: the sampler's pacing loop spins 5x less than at 1 us, for a
        # real-power error of about 0.05 % (measured) instead of 0.03 %.
        self.clock = SimClock(tick_cost_us=5)
        self.adcs = {}
        self.relay_pins = {}
        self._ticks_ms = ticks_ms or _host_ticks_ms
        self._unix_ms = unix_ms
        self._reset_cause = reset_cause
        self._log = log
        self.pressed = []
        self.net = None
        self.watchdog = None
        self.resets = 0
        self.confirmed = False

    # time
    def ticks_ms(self):
        return self._ticks_ms()

    def ticks_diff(self, a, b):
        return a - b if self._ticks_ms is not _host_ticks_ms else _host_ticks_diff(a, b)

    def unix_ms(self):
        if self._unix_ms is not None:
            return self._unix_ms()
        return int(time.time() * 1000) if not hasattr(time, "ticks_ms") else None

    def sync_time(self, host):
        return self.unix_ms() is not None

    def sleep_ms(self, ms):
        time.sleep(ms / 1000)

    # I/O
    def adc(self, pin):
        if pin not in self.adcs:
            self.adcs[pin] = SimADC(self.clock)
        return self.adcs[pin]

    def set_input(self, pin, wave, units_per_v=50.0, **kwargs):
        """Connect a simulated sensor watching `wave` to ADC pin (units_per_v: the channel's gain)."""
        self.adcs[pin] = SimADC(self.clock, wave=wave, units_per_v=units_per_v, **kwargs)
        return self.adcs[pin]

    def relay_pin(self, pin, active_low=False):
        p = SimRelayPin(active_low)
        self.relay_pins[pin] = p
        return p

    def wifi(self, ssid, password):
        if self.net is None:
            self.net = WiFi()
        return self.net

    def tls(self):
        import ssl
        return ssl.create_default_context()

    def buttons(self):
        pressed, self.pressed = self.pressed, []
        return pressed

    def press(self, relay_index):
        """A homeowner presses a relay's local button."""
        self.pressed.append(relay_index)

    # system
    def wdt(self, timeout_ms):
        self.watchdog = SimWDT(self, timeout_ms)
        return self.watchdog

    def reset_cause(self):
        return self._reset_cause

    def heap_free(self):
        import gc
        return gc.mem_free() if hasattr(gc, "mem_free") else 0

    def reset(self):
        self.resets += 1

    def firmware_ok(self):
        self.confirmed = True

    def log(self, text):
        if self._log:
            self._log(text)
