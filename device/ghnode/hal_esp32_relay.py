"""Relay output on an ESP32 GPIO. Same interface as hal_sim_relay.SimRelayPin: write(now_ms, on).

Most relay boards with an opto-coupled input are active-low (the coil is energised when the GPIO is 0).
Avoid strapping pins (0, 2, 5, 12, 15): they float or toggle during reset and would click the relay.
"""
from machine import Pin


class RelayPin:
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
