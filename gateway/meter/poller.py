"""The meter poller: one reading per time slot, a gap with its reason when a slot could not be read.

Each read is retried with exponential backoff on timeouts, lost connections and transient exception
replies (busy, gateway); illegal-address/function/value replies are not retried. Retries stop in time
for the next slot, so a dead meter costs one gap per slot and never a pile-up of requests.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from .link import LinkError
from .validate import COUNTERS, check_counters, validate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MeterReading:
    slot_ts_ms: int                 # start of the slot this reading stands for (UTC ms)
    ts_ms: int                      # when the read finished or was given up
    values: dict = field(default_factory=dict)    # accepted values by field name (units in names)
    gap: bool = False
    reason: str | None = None       # why the slot is a gap
    rejected: dict = field(default_factory=dict)  # {field: reason} for values refused by validation
    attempts: int = 0               # requests sent for this slot


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 3
    base_s: float = 0.2
    cap_s: float = 2.0

    def delay_s(self, retry):
        """Wait before retry number `retry` (0-based): base·2^retry, capped."""
        return min(self.cap_s, self.base_s * 2 ** retry)


class MeterPoller:
    def __init__(self, link, driver, period_s=10.0, retry=RetryPolicy(), timeout_s=1.0, clock=time.time):
        self.link = link
        self.driver = driver
        self.period_s = period_s
        self.retry = retry
        self.timeout_s = timeout_s   # the link's per-request timeout, used to plan retries in a slot
        self.clock = clock
        # readings, gaps, retries; error:<reason> per failed request, gap:<reason> per lost slot,
        # rejected:<reason> per refused value.
        self.counters = Counter()
        self._logged = set()
        self._last_counters = {}     # last accepted energy counters: {name: (value_wh, ts_ms)}
        self._attempts = 0

    def _now_ms(self):
        return int(self.clock() * 1000)

    def _note(self, key, detail=""):
        # Counted every time, logged at WARNING only the first time per reason: a dead meter must
        # not flood the log.
        self.counters[key] += 1
        level = logging.DEBUG if key in self._logged else logging.WARNING
        self._logged.add(key)
        log.log(level, "meter %s: %s %s", self.link.describe, key, detail)

    async def _read(self, table, address, count, deadline_s):
        for retry in range(self.retry.retries + 1):
            self._attempts += 1
            try:
                return await self.link.read(table, address, count)
            except LinkError as e:
                self._note("error:" + e.reason, str(e))
                delay = self.retry.delay_s(retry)
                if not e.transient or retry == self.retry.retries \
                        or self.clock() + delay + self.timeout_s > deadline_s:
                    raise
                self.counters["retries"] += 1
                await asyncio.sleep(delay)

    async def poll(self, slot_ts_ms, deadline_s=None):
        """Read the device once for the slot starting at `slot_ts_ms`; never raises."""
        deadline_s = deadline_s if deadline_s is not None else self.clock() + self.period_s
        self._attempts = 0

        async def read(table, address, count):
            return await self._read(table, address, count, deadline_s)

        try:
            if self.driver.reads is None:
                await self.driver.discover(read)
            results = [await read(*spec) for spec in self.driver.reads]
            raw = self.driver.decode(results)
        except LinkError as e:
            return self._gap(slot_ts_ms, e.reason, str(e))
        except Exception as e:  # a decoder bug or an odd reply must not stop metering
            log.exception("meter %s: unexpected error", self.link.describe)
            return self._gap(slot_ts_ms, "internal:" + type(e).__name__)
        ts_ms = self._now_ms()
        values, rejected = validate(raw, self.driver.quantities)
        rejected.update(check_counters(self._last_counters, values, ts_ms))
        for name, reason in rejected.items():
            values.pop(name, None)
            self._note("rejected:" + reason, name)
        self._last_counters.update((k, (values[k], ts_ms)) for k in COUNTERS if k in values)
        self.counters["readings"] += 1
        return MeterReading(slot_ts_ms, ts_ms, values, rejected=rejected, attempts=self._attempts)

    def _gap(self, slot_ts_ms, reason, detail=""):
        self.counters["gaps"] += 1
        self._note("gap:" + reason, detail)
        return MeterReading(slot_ts_ms, self._now_ms(), gap=True, reason=reason, attempts=self._attempts)

    async def run(self, on_reading, stop=None):
        """Poll at every slot boundary until `stop` (an asyncio.Event) is set; hand each reading on.

        Slots the loop could not serve at all (the process was stalled) become gaps ("overrun").
        """
        stop = stop or asyncio.Event()
        period_ms = int(self.period_s * 1000)
        slot = self._now_ms() // period_ms * period_ms + period_ms
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), max(0.0, slot / 1000 - self.clock()))
                break
            except asyncio.TimeoutError:
                pass
            on_reading(await self.poll(slot, deadline_s=(slot + period_ms) / 1000 - 0.05))
            slot += period_ms
            while slot + period_ms <= self._now_ms():
                on_reading(self._gap(slot, "overrun"))
                slot += period_ms
