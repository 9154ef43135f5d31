"""The utility meter inside the gateway process: a poller task, its readings stored, intervals cross-checked.

  MeterPoller.run (async, on the gateway's event loop; Modbus I/O never blocks ingest)
      --> on_reading --> Storage.meter_reading (gaps too, with their reason), metrics
      --> for every interval whose two sides are final (crosscheck.check_due):
          meter energy interpolated at its boundaries vs the household's grid-connection circuits
          --> Storage.meter_check, metrics, a warning when over the tolerance

Each interval is checked once. The circuits are the household's `grid = true` channels: the meter
and they measure the same connection point, so their net energies must agree.
"""
from __future__ import annotations

import datetime
import logging
import sqlite3
from typing import Callable

from ..metrics import MeterMetrics
from .crosscheck import CounterSample, check_due, cross_check, meter_interval_energy
from .devices import driver_for
from .link import ModbusLink
from .poller import MeterPoller, MeterReading, RetryPolicy

log = logging.getLogger(__name__)

# After a long stop of the gateway, intervals before this many are not checked one by one (the
# meter was not read then; each would only say so).
MAX_CATCH_UP_INTERVALS = 96


def link_for(cfg) -> ModbusLink:
    """The Modbus link a validated [meter] section describes."""
    if cfg.transport == "tcp":
        return ModbusLink.tcp(cfg.host, cfg.port, cfg.device_id, cfg.timeout_s)
    return ModbusLink.rtu(cfg.serial_port, cfg.baudrate, cfg.parity, cfg.stopbits, cfg.device_id, cfg.timeout_s)


def _utc(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


class MeterService:
    def __init__(self, cfg, *, registry, storage, metrics_registry, interval_ms: int, tracks: dict,
                 flush: Callable[[], None], clock_ms: Callable[[], int]):
        self.cfg, self.storage, self.interval_ms, self.tracks = cfg, storage, interval_ms, tracks
        self.flush, self.clock_ms = flush, clock_ms
        self.household = cfg.household
        self.circuits = {(e.node_id, c.n): f"{e.node_id}/{c.name}" for e in registry if e.household == cfg.household
                         for c in e.channels.values() if c.grid}
        self.metrics = MeterMetrics(metrics_registry)
        self.poller: MeterPoller | None = None  # made in run(): pymodbus clients need the running loop
        self.last_reading: MeterReading | None = None
        self._synced: dict[str, int] = {}  # poller counters already added to the metrics
        self._meter_through_ms = storage.last_meter_counters_ms(self.household)
        last = storage.last_meter_check_start(self.household)
        self._next_start_ms = None if last is None else last + interval_ms

    async def run(self, stop) -> None:
        """Poll until `stop` (an asyncio.Event) is set."""
        cfg = self.cfg
        self.poller = MeterPoller(link_for(cfg), driver_for(cfg.kind), period_s=cfg.period_s,
                                  retry=RetryPolicy(cfg.retries, cfg.retry_base_s, cfg.retry_cap_s),
                                  timeout_s=cfg.timeout_s, clock=lambda: self.clock_ms() / 1000)
        log.info("meter %s (%s) of household %s every %g s", self.poller.link.describe, self.cfg.kind,
                 self.household, self.cfg.period_s)
        try:
            await self.poller.run(self.on_reading, stop)
        except Exception:  # a bug here must not go unnoticed, nor stop the gateway: ingest goes on
            log.exception("the meter poller stopped")

    def close(self) -> None:
        if self.poller:
            self.poller.link.close()

    def on_reading(self, reading: MeterReading) -> None:
        self.last_reading = reading
        try:
            self.storage.add_meter_reading(self.household, reading)
        except sqlite3.Error as e:  # the reading is lost, the poller goes on; ingest reports a broken database
            log.error("meter reading of slot %d not stored: %s", reading.slot_ts_ms, e)
            return
        self._update_metrics(reading)
        v = reading.values
        if not reading.gap and "import_energy_wh" in v and "export_energy_wh" in v:
            self._meter_through_ms = reading.ts_ms
        if self._next_start_ms is None:  # the first interval that starts after the first reading
            self._next_start_ms = -(-reading.ts_ms // self.interval_ms) * self.interval_ms
        try:
            self.check()
        except sqlite3.Error as e:  # tried again with the next reading
            log.error("meter cross-check failed: %s", e)

    def _update_metrics(self, reading: MeterReading) -> None:
        m = self.metrics
        for key, value in (self.poller.counters if self.poller else {}).items():
            delta = value - self._synced.get(key, 0)
            if delta <= 0:
                continue
            self._synced[key] = value
            kind, _, reason = key.partition(":")
            if kind == "readings":
                m.readings.inc(delta)
            elif kind == "retries":
                m.retries.inc(delta)
            elif kind == "gap":
                m.gaps.labels(reason).inc(delta)
            elif kind == "error":
                m.request_errors.labels(reason).inc(delta)
            elif kind == "rejected":
                m.rejected_values.labels(reason).inc(delta)
        m.up.set(0 if reading.gap else 1)
        if "power_w" in reading.values:
            m.power_w.set(reading.values["power_w"])
        for direction in ("import", "export"):
            if f"{direction}_energy_wh" in reading.values:
                m.energy_wh.labels(direction).set(reading.values[f"{direction}_energy_wh"])

    def circuits_through_ms(self) -> int | None:
        """The oldest of the grid channels' latest reading times (None if one never reported)."""
        times = []
        for node, ch in self.circuits:
            track = self.tracks.get(node)
            mark = track.channels.get(ch) if track else None
            if mark is None:
                return None
            times.append(mark.time_ms)
        return min(times)

    def check(self) -> None:
        """Cross-check every interval that is due, oldest first."""
        if self._next_start_ms is None:
            return
        now = self.clock_ms()
        self._next_start_ms = max(self._next_start_ms,
                                  now - now % self.interval_ms - MAX_CATCH_UP_INTERVALS * self.interval_ms)
        flushed = False
        while True:
            start = self._next_start_ms
            due, complete = check_due(start + self.interval_ms, now, self._meter_through_ms, self.circuits_through_ms(),
                                      self.cfg.max_bracket_s * 1000, self.cfg.circuits_wait_s * 1000)
            if not due:
                return
            if not flushed:  # readings the ingest core has seen are committed, so the energies are whole
                self.flush()
                flushed = True
            self._check_interval(start, complete, now)
            self._next_start_ms = start + self.interval_ms

    def _check_interval(self, start: int, complete: bool, now: int) -> None:
        end, bracket_ms = start + self.interval_ms, self.cfg.max_bracket_s * 1000
        samples = [CounterSample(*row) for row in self.storage.meter_counters(self.household, start - bracket_ms,
                                                                               end + bracket_ms)]
        meter = meter_interval_energy(samples, start, self.interval_ms, bracket_ms)
        circuits = {name: (0, 0) for name in self.circuits.values()}
        for row in self.storage.interval_energy(start, start + 1):
            name = self.circuits.get((row["node"], row["ch"]))
            if name is not None:
                circuits[name] = (row["import_wh"], row["export_wh"])
        row = {"household": self.household, "start_ms": start, "interval_ms": self.interval_ms,
               "circuits_import_wh": sum(i for i, _ in circuits.values()),
               "circuits_export_wh": sum(e for _, e in circuits.values()),
               "circuits_complete": complete, "circuits": {k: list(v) for k, v in sorted(circuits.items())},
               "checked_ms": now}
        if meter is None:
            row.update(status="meter_gap", meter_import_wh=None, meter_export_wh=None, discrepancy_wh=None,
                       discrepancy_pct=None)
        else:
            c = cross_check(meter, circuits, self.cfg.tolerance_pct, self.cfg.tolerance_wh)
            row.update(status="ok" if c.within_tolerance else "discrepancy", meter_import_wh=c.meter_import_wh,
                       meter_export_wh=c.meter_export_wh, discrepancy_wh=c.discrepancy_wh,
                       discrepancy_pct=c.discrepancy_pct)
        try:
            self.storage.add_meter_check(row)
        except sqlite3.Error as e:
            log.error("meter cross-check of %s not stored: %s", _utc(start), e)
        self._report(row)

    def _report(self, row: dict) -> None:
        m = self.metrics
        m.checks.labels(row["status"]).inc()
        m.checked_interval_start_s.set(row["start_ms"] / 1000)
        for direction in ("import", "export"):
            m.interval_energy_wh.labels("circuits", direction).set(row[f"circuits_{direction}_wh"])
        incomplete = "" if row["circuits_complete"] else "; circuits incomplete: a node's readings stop before its end"
        when = f"household {self.household}, interval {_utc(row['start_ms'])} ({self.interval_ms // 1000} s)"
        unknown = float("nan")  # what Prometheus shows for a figure this interval does not have
        for direction in ("import", "export"):
            wh = row[f"meter_{direction}_wh"]
            m.interval_energy_wh.labels("meter", direction).set(unknown if wh is None else wh)
        pct = row["discrepancy_pct"]
        m.discrepancy_wh.set(unknown if row["discrepancy_wh"] is None else row["discrepancy_wh"])
        m.discrepancy_percent.set(unknown if pct is None else pct)
        if row["status"] == "meter_gap":
            log.info("meter cross-check %s: no meter energy (no readings close enough to a boundary)", when)
        elif row["status"] == "discrepancy":
            log.warning("meter cross-check %s: meter net %+d Wh (import %d, export %d), circuits net %+d Wh "
                        "(import %d, export %d): discrepancy %+d Wh%s, over max(%d Wh, %g %%)%s", when,
                        row["meter_import_wh"] - row["meter_export_wh"], row["meter_import_wh"],
                        row["meter_export_wh"], row["circuits_import_wh"] - row["circuits_export_wh"],
                        row["circuits_import_wh"], row["circuits_export_wh"], row["discrepancy_wh"],
                        f" ({pct:.1f} %)" if pct is not None else "", self.cfg.tolerance_wh,
                        self.cfg.tolerance_pct, incomplete)

    # --- for the HTTP API ----------------------------------------------------------------------------

    def status(self) -> dict:
        r = self.last_reading
        checks = self.storage.meter_checks(self.household, self._next_start_ms - self.interval_ms,
                                           self._next_start_ms) if self._next_start_ms is not None else []
        return {
            "household": self.household, "kind": self.cfg.kind, "period_s": self.cfg.period_s,
            "interval_s": self.interval_ms // 1000,
            "link": self.poller.link.describe if self.poller else None,
            "identity": self.poller.driver.identity if self.poller else {},
            "counters": dict(self.poller.counters) if self.poller else {},
            "last_reading": None if r is None else {"slot_ms": r.slot_ts_ms, "ts_ms": r.ts_ms, "gap": r.gap,
                                                    "reason": r.reason, "values": r.values, "rejected": r.rejected},
            "last_check": checks[-1] if checks else None,
        }

    def readings(self, start_ms: int, end_ms: int) -> list[dict]:
        return self.storage.meter_readings(self.household, start_ms, end_ms)

    def checks(self, start_ms: int, end_ms: int) -> list[dict]:
        return self.storage.meter_checks(self.household, start_ms, end_ms)
