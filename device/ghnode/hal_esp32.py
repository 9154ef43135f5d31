"""ESP32 hardware for the node app: hal_esp32.Board gives ghnode.app everything it uses.

Imported on the board only (needs `machine` and `network`); hal_sim.SimBoard is the host twin.
Use ADC1 pins (GPIO32-39 on the ESP32) for inputs: ADC2 is unusable while Wi-Fi is on. For
sampler.sample() the clock is the `time` module itself (ticks_us, ticks_diff, ticks_add).
"""
import gc
import time

import machine
import network
from machine import ADC, Pin

class Esp32ADC:
    """One ADC input at 11 dB attenuation (linear ~150-2450 mV), read in calibrated microvolts.

    read_uv is machine.ADC's own bound method, stored once, so `adc.read_uv` in the sampler's reads
    tuple calls straight into C: no Python wrapper frame per sample. Its values have 1 mV steps.
    """

    def __init__(self, pin):
        self.adc = ADC(Pin(pin), atten=ADC.ATTN_11DB)
        self.read_uv = self.adc.read_uv


class RelayPin:
    """Relay output: write(now_ms, on), like hal_sim.SimRelayPin.

    Most relay boards with an opto-coupled input are active-low (the coil is energised when the GPIO
    is 0). Avoid strapping pins (0, 2, 5, 12, 15): they float or toggle during reset.
    """

    def __init__(self, gpio, active_low=False):
        self.active_low = active_low
        # Give the idle (off) level in the constructor so the pad never drives "on" while switching
        # to output mode at boot.
        self._pin = Pin(gpio, Pin.OUT, value=1 if active_low else 0)

    def write(self, now_ms, on):
        self._pin.value(1 if bool(on) != self.active_low else 0)

    @property
    def on(self):
        return bool(self._pin.value()) != self.active_low


class WiFi:
    def __init__(self, ssid, password, hostname=None):
        self.ssid = ssid
        self.password = password
        self.wlan = network.WLAN(network.STA_IF)
        if hostname:
            try:
                network.hostname(hostname)
            except (AttributeError, ValueError, OSError):  # older firmware
                pass

    def isconnected(self):
        return self.wlan.isconnected()

    def connect(self):
        """Start associating and return at once; the link polls isconnected()."""
        w = self.wlan
        if not w.active():
            w.active(True)
            try:
                w.config(pm=w.PM_NONE)  # power save adds 100s of ms latency to MQTT replies
            except (AttributeError, ValueError, OSError):
                pass
        if w.isconnected() or w.status() == network.STAT_CONNECTING:
            return  # calling connect() mid-association raises "Wifi Internal Error"
        w.connect(self.ssid, self.password)

    def disconnect(self):
        self.wlan.disconnect()

    def rssi(self):
        try:
            return self.wlan.status("rssi")
        except (OSError, ValueError):  # not associated
            return None

    def ip(self):
        return self.wlan.ifconfig()[0]

class Button:
    """A local push button (to GND, internal pull-up); pressed() is True once per press, debounced."""

    DEBOUNCE_MS = 50

    def __init__(self, gpio):
        self._pin = Pin(gpio, Pin.IN, Pin.PULL_UP)
        self._count = 0
        self._last_ms = 0
        self._seen = 0
        self._pin.irq(self._irq, Pin.IRQ_FALLING)

    def _irq(self, pin):
        # Runs in interrupt context: no allocation, just count the (debounced) edge.
        now = time.ticks_ms()
        if time.ticks_diff(now, self._last_ms) > self.DEBOUNCE_MS:
            self._count += 1
        self._last_ms = now

    def pressed(self):
        if self._count != self._seen:
            self._seen = self._count
            return True
        return False


# MicroPython's time.time() counts from 2000-01-01 on some ports and releases, 1970 on others.
_EPOCH_OFFSET_S = 946684800 if time.gmtime(0)[0] == 2000 else 0
_RESET_CAUSES = {
    machine.PWRON_RESET: "power_on", machine.HARD_RESET: "hard_reset", machine.WDT_RESET: "watchdog",
    machine.DEEPSLEEP_RESET: "deep_sleep", machine.SOFT_RESET: "soft_reset",
}


class Board:
    root = ""  # files live at the root of the flash filesystem: /config.json, /state.json, /buf

    def __init__(self):
        self.clock = time
        self._synced = False
        self._cause = _RESET_CAUSES.get(machine.reset_cause(), "unknown")

    def ticks_ms(self):
        return time.ticks_ms()

    def ticks_diff(self, a, b):
        return time.ticks_diff(a, b)

    def unix_ms(self):
        if not self._synced:
            return None
        return (time.time() + _EPOCH_OFFSET_S) * 1000

    def sync_time(self, host):
        import ntptime

        ntptime.host = host
        try:
            ntptime.settime()
            self._synced = True
        except (OSError, OverflowError):
            pass
        return self._synced

    def sleep_ms(self, ms):
        time.sleep_ms(ms)

    def adc(self, pin):
        return Esp32ADC(pin)

    def relay_pin(self, pin, active_low=False):
        return RelayPin(pin, active_low)

    def button(self, pin):
        return Button(pin)

    def wifi(self, ssid, password):
        return WiFi(ssid, password)

    def tls(self):
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile="/ca.pem")  # the gateway's CA, copied at provisioning
        return ctx

    def wdt(self, timeout_ms):
        return machine.WDT(timeout=timeout_ms)

    def reset_cause(self):
        return self._cause

    def heap_free(self):
        return gc.mem_free()

    def reset(self):
        machine.reset()

    def firmware_ok(self):
        import appdir

        appdir.confirm()

    def log(self, text):
        print(text)
