"""Simulated relay output: records every write with its time so tests can check the pin history.

Same interface as hal_esp32_relay.RelayPin: write(now_ms, on).
"""


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
