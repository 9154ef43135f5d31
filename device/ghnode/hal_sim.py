"""Simulated hardware, so the node runs on a host and under MicroPython without a board.

SimBoard gives the app (ghnode.app) everything hal_esp32.Board gives it on an ESP32: ADC inputs
(SimADC watching a Waveform, on one shared sampling clock), relay outputs (SimRelayPin), buttons,
Wi-Fi, a watchdog, flash as a directory and the host's clock. Only math, random, time and gc:
this module runs on MicroPython too.
"""
import math
import random
import time
from array import array

# ---------------------------------------------------------------------------------------------
# Simulated ADC: SimClock, Waveform, SimADC, ArrayADC
# ---------------------------------------------------------------------------------------------

TICKS_PERIOD = 1 << 30  # MicroPython's ticks_us wraps here
_TICKS_MAX = TICKS_PERIOD - 1  # unlike TICKS_PERIOD, a small int on MicroPython: no allocation
_TICKS_HALF = TICKS_PERIOD >> 1
ADC_FULL_SCALE_UV = 3_100_000  # ESP32 read_uv() at 11 dB saturates about here


class SimClock:
    """A microsecond clock with MicroPython ticks semantics (wrapping at TICKS_PERIOD).

    Simulated time only moves when something costs time: a ticks_us() call or an ADC read.
    """

    def __init__(self, start_us=0, tick_cost_us=1):
        self.now_us = start_us  # absolute simulated time; never wraps
        self.tick_cost_us = tick_cost_us

    def ticks_us(self):
        t = self.now_us
        self.now_us = t + self.tick_cost_us
        return t & _TICKS_MAX

    def ticks_add(self, t, delta_us):
        return (t + delta_us) & _TICKS_MAX

    def ticks_diff(self, a, b):
        d = (a - b) & _TICKS_MAX
        return d - _TICKS_MAX - 1 if d >= _TICKS_HALF else d


class Waveform:
    """A mains-synchronous quantity (A or V): a fundamental plus harmonics.

    value(t) = sqrt2*rms*sin(w*t + phase) + sum over harmonics of sqrt2*rms*rel*sin(h*w*t + phase_h)
    All phases are in degrees and relative to t = 0 (the rising zero crossing of a phase-0 voltage);
    a harmonic's phase is in its own cycles. A current lagging its voltage by 30 deg has phase -30.
    """

    def __init__(self, rms, freq_hz=50.0, phase_deg=0.0, harmonics=()):
        self.freq_hz = freq_hz
        self.parts = [(1, rms, phase_deg)] + [(h, rms * rel, ph) for h, rel, ph in harmonics]
        w = 2 * math.pi * freq_hz * 1e-6  # rad per us
        self._terms = [(math.sqrt(2) * r, h * w, math.radians(ph)) for h, r, ph in self.parts]

    def rms(self):
        """Exact RMS: the square root of the sum of the squared component RMS values."""
        return math.sqrt(sum(r * r for _, r, _ in self.parts))

    def value(self, t_us):
        x = 0.0
        for amp, w, ph in self._terms:
            x += amp * math.sin(w * t_us + ph)
        return x

    def components(self):
        """[(order, rms, phase_deg)], the fundamental first."""
        return list(self.parts)


def mean_power(v, i):
    """Exact real power of two Waveforms: sum over common orders of Vh*Ih*cos(phi_vh - phi_ih)."""
    iparts = {h: (r, ph) for h, r, ph in i.components()}
    p = 0.0
    for h, vr, vph in v.components():
        if h in iparts:
            ir, iph = iparts[h]
            p += vr * ir * math.cos(math.radians(vph - iph))
    return p


class SimADC:
    """An ESP32 ADC input behind a sensor (CT or voltage transformer) watching a Waveform.

    units_per_v: primary units per ADC volt (A/V for a CT, V/V for a VT), i.e. the calibration gain.
    lead_deg:    the sensor's own phase lead (a time shift at the fundamental), for phase calibration.
    noise_uv:    RMS of ADC noise, "gauss" or "uniform"; quantum_uv: read_uv() has 1 mV resolution.
    read_cost_us: each read advances the shared clock, so sequentially read channels see real skew.
    unplugged:   None, "bias" (pinned at the bias), "low" or "high" (pinned at a rail).
    """

    def __init__(self, clock, wave=None, units_per_v=50.0, bias_uv=1_300_000, lead_deg=0.0, noise_uv=0,
                 noise="gauss", quantum_uv=1000, read_cost_us=40, unplugged=None):
        self.clock = clock
        self.wave = wave
        self.uv_per_unit = 1e6 / units_per_v
        self.bias_uv = bias_uv
        self.lead_us = lead_deg / 360 / wave.freq_hz * 1e6 if wave else 0.0
        self.noise_uv = noise_uv
        self.gauss = noise == "gauss"
        self.quantum_uv = quantum_uv
        self.read_cost_us = read_cost_us
        self.pinned = {None: None, "bias": bias_uv, "low": 0, "high": ADC_FULL_SCALE_UV}[unplugged]

    def _noise(self):
        if self.gauss:  # Box-Muller: MicroPython's random has no gauss()
            return self.noise_uv * math.sqrt(-2 * math.log(1.0 - random.random())) * math.cos(
                2 * math.pi * random.random())
        return self.noise_uv * math.sqrt(12) * (random.random() - 0.5)

    def read_uv(self):
        t = self.clock.now_us
        self.clock.now_us = t + self.read_cost_us
        if self.pinned is not None:
            return self.pinned
        x = self.bias_uv
        if self.wave:
            x += self.uv_per_unit * self.wave.value(t + self.lead_us)
        if self.noise_uv:
            x += self._noise()
        x = min(max(x, 0), ADC_FULL_SCALE_UV)
        q = self.quantum_uv
        return int(x / q + 0.5) * q


class ArrayADC:
    """Replays precomputed readings from an array('i'); read_uv() allocates nothing.

    For benchmarks and the heap_lock proof that the sampler loop allocates nothing.
    """

    def __init__(self, samples):
        self.samples = samples
        self.n = len(samples)
        self.i = 0

    @classmethod
    def record(cls, adc, n):
        """An ArrayADC replaying n readings taken now from another ADC (e.g. a SimADC)."""
        return cls(array("i", [adc.read_uv() for _ in range(n)]))

    def read_uv(self):
        i = self.i
        x = self.samples[i]
        i += 1
        if i == self.n:
            i = 0
        self.i = i
        return x


# ---------------------------------------------------------------------------------------------
# Relay outputs, Wi-Fi and the board
# ---------------------------------------------------------------------------------------------


class SimRelayPin:
    def __init__(self, active_low=False):
        self.active_low = active_low
        self.level = 1 if active_low else 0  # the physical line; idles de-energised, as on a board
        self.writes = []                     # (now_ms, on) for every write, repeats included

    def write(self, now_ms, on):
        on = bool(on)
        self.writes.append((now_ms, on))
        self.level = int(on != self.active_low)

    @property
    def on(self):
        return self.level != self.active_low

    def transitions(self):
        """[(now_ms, on)] where the output actually changed, starting from de-energised."""
        out = []
        last = False
        for t, on in self.writes:
            if on != last:
                out.append((t, on))
                last = on
        return out


class WiFi:
    def __init__(self, rssi=-55):
        self.in_range = True  # False: the access point is gone, connect() cannot succeed
        self.up = True
        self.connects = 0
        self._rssi = rssi

    def isconnected(self):
        return self.up

    def connect(self):
        self.connects += 1
        self.up = self.in_range

    def out_of_range(self):
        self.in_range = self.up = False

    def rssi(self):
        return self._rssi if self.up else None


def _host_ticks_ms():
    if hasattr(time, "ticks_ms"):
        return time.ticks_ms()
    return int(time.monotonic() * 1000)


def _host_ticks_diff(a, b):
    if hasattr(time, "ticks_diff"):
        return time.ticks_diff(a, b)
    return a - b


class SimButton:
    """A local push button: press() it in a test; pressed() is True once per press."""

    def __init__(self):
        self.presses = 0
        self._seen = 0

    def press(self):
        self.presses += 1

    def pressed(self):
        if self.presses != self._seen:
            self._seen = self.presses
            return True
        return False


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
        self.button_pins = {}
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

    def button(self, pin):
        self.button_pins[pin] = SimButton()
        return self.button_pins[pin]

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
