"""OpenADR 2.0b VEN for the community (openleadr): telemetry up, demand-response events down.

The VEN registers with the DSO's VTN, reports the community's net load (W, consumption-positive,
one aggregate: no household data leaves) every `report_interval`, and turns each event into
`DrAction`s handed to an injected callback, which acts (sheds or shifts flexible loads through
relays, or adjusts local prices) and returns True to opt in or False to opt out.

Signals understood: SIMPLE (level 0-3) -> shed; LOAD_DISPATCH / LOAD_CONTROL -> shift (W, as a
delta or a setpoint per its signal type); ENERGY_PRICE / ELECTRICITY_PRICE -> price (currency
units per kWh). An event with no understood signal is opted out of.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Callable, NamedTuple

from openleadr import OpenADRClient

log = logging.getLogger(__name__)


class DrKind(StrEnum):
    SHED = "shed"
    SHIFT = "shift"
    PRICE = "price"


SIGNAL_KINDS = {
    "SIMPLE": DrKind.SHED,
    "LOAD_DISPATCH": DrKind.SHIFT,
    "LOAD_CONTROL": DrKind.SHIFT,
    "ENERGY_PRICE": DrKind.PRICE,
    "ELECTRICITY_PRICE": DrKind.PRICE,
}


class DrAction(NamedTuple):
    event_id: str
    kind: DrKind
    signal_name: str
    signal_type: str   # level, delta, setpoint, price, ...
    start_ms: int
    duration_ms: int
    value: float       # shed: level 0-3; shift: W; price: currency units per kWh


def _ms(value: datetime | timedelta) -> int:
    if isinstance(value, timedelta):
        return value // timedelta(milliseconds=1)
    return int(value.timestamp() * 1000)


def actions_from_event(event: dict) -> list[DrAction]:
    """The actions in an openleadr event (as its on_event handler receives it), in time order."""
    event_id = event["event_descriptor"]["event_id"]
    active = event.get("active_period", {})
    actions = []
    for signal in event.get("event_signals", []):
        kind = SIGNAL_KINDS.get(str(signal["signal_name"]).upper())
        if kind is None:
            continue
        start = active.get("dtstart")
        for interval in signal.get("intervals", []):
            start = interval.get("dtstart", start)
            duration = interval["duration"]
            actions.append(DrAction(event_id, kind, str(signal["signal_name"]).upper(),
                                    str(signal["signal_type"]), _ms(start), _ms(duration),
                                    float(interval["signal_payload"])))
            start = start + duration  # intervals without dtstart follow each other
    return sorted(actions, key=lambda a: (a.start_ms, a.kind, a.signal_name))


class CommunityVen:
    """The community's VEN; `start()`/`stop()` inside a running asyncio loop."""

    def __init__(self, vtn_url: str, ven_name: str, net_load_w: Callable[[], float],
                 on_actions: Callable[[list[DrAction]], bool],
                 report_interval: timedelta = timedelta(minutes=15), **client_options):
        self.client = OpenADRClient(ven_name=ven_name, vtn_url=vtn_url, **client_options)
        self.client.add_report(callback=lambda: float(net_load_w()), resource_id="community",
                               measurement="REAL_POWER", unit="W", scale="none",
                               sampling_rate=report_interval, report_duration=report_interval)
        self.client.add_handler("on_event", self._on_event)
        self.client.add_handler("on_update_event", self._on_event)
        self._on_actions = on_actions

    async def _on_event(self, event: dict) -> str:
        actions = actions_from_event(event)
        try:
            opt_in = bool(actions) and self._on_actions(actions)
        except Exception:  # a failing action must not take the VEN down; the DSO learns of it
            log.exception("acting on event %s failed", event["event_descriptor"]["event_id"])
            opt_in = False
        return "optIn" if opt_in else "optOut"

    async def start(self) -> None:
        await self.client.run()

    async def stop(self) -> None:
        await self.client.stop()
