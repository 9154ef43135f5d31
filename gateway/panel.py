"""The gateway's status LED and button (gpiozero; tests use MockFactory pins).

LED: steady on = nodes' broker and controller both connected; slow blink = controller
unreachable (readings are kept in the outbox); fast blink = the local broker is down (nodes
buffer in their flash); off = the service is not running.
Button: a press republishes Home Assistant discovery and the gateway's status, and the LED
flashes to confirm.
"""
from __future__ import annotations

import asyncio
from typing import Callable

OK, BUFFERING, BROKER_DOWN, STOPPED = "ok", "buffering", "broker_down", "stopped"


def panel_state(broker_up: bool, uplink_up: bool, uplink_enabled: bool) -> str:
    if not broker_up:
        return BROKER_DOWN
    if uplink_enabled and not uplink_up:
        return BUFFERING
    return OK


class StatusPanel:
    BLINK_S = {BUFFERING: (1.0, 1.0), BROKER_DOWN: (0.1, 0.1)}  # (on, off)
    CONFIRM_S = 0.4

    def __init__(self, led_pin: int, button_pin: int, pin_factory=None,
                 on_press: Callable[[], None] | None = None, loop: asyncio.AbstractEventLoop | None = None):
        from gpiozero import LED, Button

        self.led = LED(led_pin, pin_factory=pin_factory)
        self.button = Button(button_pin, pin_factory=pin_factory)
        self.state = STOPPED
        self._on_press, self._loop = on_press, loop
        # gpiozero calls back on its own thread; the handler belongs on the event loop.
        self.button.when_pressed = self._pressed

    def show(self, state: str) -> None:
        if state == self.state:
            return
        self.state = state
        if state == OK:
            self.led.on()
        elif state == STOPPED:
            self.led.off()
        else:
            on_s, off_s = self.BLINK_S[state]
            self.led.blink(on_time=on_s, off_time=off_s)

    def _pressed(self) -> None:
        self.led.blink(on_time=0.05, off_time=0.05, n=3, background=True)
        restore, self.state = self.state, ""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._after_press, restore)

    def _after_press(self, restore: str) -> None:
        if self._on_press:
            self._on_press()
        self._loop.call_later(self.CONFIRM_S, self.show, restore)  # let the 3 flashes finish

    def close(self) -> None:
        self.show(STOPPED)
        self.led.close()
        self.button.close()
