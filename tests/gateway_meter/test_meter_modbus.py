"""The meter poller against real pymodbus servers: Modbus TCP on loopback, RTU over a pty null modem."""
import asyncio
import math
import time

import pytest

from gridhive.broker import free_port
from gridhive.gateway.meter import (EastronDriver, MeterPoller, ModbusLink, RetryPolicy, SunSpecDriver,
                                    counter_samples, cross_check, driver_for, meter_interval_energy)
from gridhive.gateway.meter.registers import SDM630, EastronMap, FloatField

from emulators import SDM120_VALUES, SDM630_VALUES, EastronEmulator, PtyNullModem, sunspec_inverter

TIMEOUT_S = 0.15
FAST = RetryPolicy(retries=3, base_s=0.02, cap_s=0.1)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def tcp_poller(port, driver, **kw):
    link = ModbusLink.tcp("127.0.0.1", port, timeout_s=TIMEOUT_S)
    return MeterPoller(link, driver, timeout_s=TIMEOUT_S, retry=kw.pop("retry", FAST), **kw)


def sdm630_reads():
    return len(EastronDriver(SDM630).reads)


def test_sdm630_over_tcp_reads_every_field():
    async def scenario():
        meter = EastronEmulator(SDM630_VALUES)
        port = free_port()
        await meter.emu.serve_tcp(port)
        poller = tcp_poller(port, driver_for("sdm630"))
        reading = await poller.poll(1_000)
        await meter.emu.stop()
        return reading, poller

    reading, poller = run(scenario())
    assert not reading.gap and reading.slot_ts_ms == 1_000 and reading.attempts == sdm630_reads()
    v = reading.values
    assert math.isclose(v["voltage_l2_v"], 229.8, rel_tol=1e-6)
    assert math.isclose(v["current_l1_a"], 10.25, rel_tol=1e-6)
    assert v["power_l3_w"] == -150.0 and v["power_w"] == 3150.0
    assert math.isclose(v["power_factor_l3"], -0.86, rel_tol=1e-6)
    assert math.isclose(v["import_energy_wh"], 12_345_670.0, abs_tol=1.0)   # float32 kWh -> Wh
    assert v["export_energy_wh"] == 2_345_500.0
    assert poller.counters["readings"] == 1 and poller.counters["gaps"] == 0


def test_busy_replies_are_retried_with_backoff():
    async def scenario():
        meter = EastronEmulator(SDM630_VALUES)
        port = free_port()
        await meter.emu.serve_tcp(port)
        meter.emu.busy_replies = 2
        poller = tcp_poller(port, driver_for("sdm630"))
        t0 = time.perf_counter()
        reading = await poller.poll(0)
        elapsed_s = time.perf_counter() - t0
        await meter.emu.stop()
        return reading, poller, elapsed_s

    reading, poller, elapsed_s = run(scenario())
    assert not reading.gap and reading.attempts == sdm630_reads() + 2
    assert poller.counters["error:exception_6"] == 2 and poller.counters["retries"] == 2
    assert elapsed_s >= FAST.delay_s(0) + FAST.delay_s(1)


def test_illegal_address_is_a_gap_and_not_retried():
    # A map with one parameter the meter does not have (total kWh at 0x0156): exception 2.
    dmap = EastronMap("SDM630+", SDM630.table, SDM630.fields + (FloatField("total_energy_wh", 0x0156, "energy_wh"),))

    async def scenario():
        meter = EastronEmulator(SDM630_VALUES)
        port = free_port()
        await meter.emu.serve_tcp(port)
        poller = tcp_poller(port, EastronDriver(dmap))
        reading = await poller.poll(0)
        await meter.emu.stop()
        return reading, poller

    reading, poller = run(scenario())
    assert reading.gap and reading.reason == "exception_2" and reading.values == {}
    assert reading.attempts == sdm630_reads() + 1
    assert poller.counters["retries"] == 0 and poller.counters["gaps"] == 1


def test_a_meter_that_stops_answering_gives_timeout_gaps_then_recovers():
    async def scenario():
        meter = EastronEmulator(SDM630_VALUES)
        port = free_port()
        await meter.emu.serve_tcp(port)
        poller = tcp_poller(port, driver_for("sdm630"))
        first = await poller.poll(0)
        meter.emu.silent = True
        t0 = time.perf_counter()
        silent = [await poller.poll(1), await poller.poll(2)]
        silent_s = time.perf_counter() - t0
        meter.emu.silent = False
        back = await poller.poll(3)
        await meter.emu.stop()
        return first, silent, silent_s, back, poller

    first, silent, silent_s, back, poller = run(scenario())
    assert not first.gap and not back.gap
    assert all(r.gap and r.reason == "timeout" and r.attempts == FAST.retries + 1 for r in silent)
    # Two slots: 4 timeouts each plus the backoff, bounded.
    assert silent_s < 2 * (4 * TIMEOUT_S + 3 * FAST.cap_s) + 1.0
    assert poller.counters["error:timeout"] == 8 and poller.counters["gaps"] == 2


def test_meter_server_down_then_back_on_the_same_port():
    async def scenario():
        meter = EastronEmulator(SDM630_VALUES)
        port = free_port()
        await meter.emu.serve_tcp(port)
        poller = tcp_poller(port, driver_for("sdm630"))
        readings = [await poller.poll(0)]
        await meter.emu.stop()
        readings.append(await poller.poll(1))
        await meter.emu.serve_tcp(port)
        readings.append(await poller.poll(2))
        await meter.emu.stop()
        return readings

    ok, down, back = run(scenario())
    assert not ok.gap and not back.gap
    assert down.gap and down.reason in ("connect_failed", "connection_lost", "timeout")


def test_impossible_values_are_rejected_and_counted():
    async def scenario():
        meter = EastronEmulator(SDM630_VALUES)
        port = free_port()
        await meter.emu.serve_tcp(port)
        poller = tcp_poller(port, driver_for("sdm630"))
        good = await poller.poll(0)
        meter.set(0x00, float("nan"))        # L1 volts
        meter.set(0x34, float("inf"))        # total power
        meter.set(0x46, 0.0)                 # frequency
        meter.set(0x48, 12_000.0)            # import kWh went backwards
        bad = await poller.poll(1)
        for address in (0x00, 0x34, 0x46, 0x48):   # the meter is sane again
            meter.set(address, SDM630_VALUES[address])
        after = await poller.poll(2)
        await meter.emu.stop()
        return good, bad, after, poller

    good, bad, after, poller = run(scenario())
    assert not bad.gap
    assert bad.rejected == {"voltage_l1_v": "nan", "power_w": "inf", "frequency_hz": "out_of_range",
                            "import_energy_wh": "counter_decreased"}
    assert not set(bad.rejected) & set(bad.values) and "voltage_l2_v" in bad.values
    assert after.rejected == {} and after.values == good.values   # baseline: the last accepted counter
    for reason in ("nan", "inf", "out_of_range", "counter_decreased"):
        assert poller.counters["rejected:" + reason] == 1


def test_run_gives_one_reading_per_slot_with_gaps_marked():
    period_s = 0.3

    async def scenario():
        meter = EastronEmulator(SDM630_VALUES)
        port = free_port()
        await meter.emu.serve_tcp(port)
        poller = tcp_poller(port, driver_for("sdm630"), period_s=period_s,
                            retry=RetryPolicy(retries=5, base_s=0.02, cap_s=0.05))
        readings, stop = [], asyncio.Event()
        task = asyncio.create_task(poller.run(readings.append, stop))
        await asyncio.sleep(3 * period_s)
        meter.emu.silent = True
        await asyncio.sleep(3 * period_s)
        meter.emu.silent = False
        await asyncio.sleep(3 * period_s)
        stop.set()
        await asyncio.wait_for(task, 2)
        await meter.emu.stop()
        return readings

    readings = run(scenario())
    slots = [r.slot_ts_ms for r in readings]
    assert slots == list(range(slots[0], slots[0] + 300 * len(slots), 300))   # no slot skipped
    gaps = [r for r in readings if r.gap]
    assert 2 <= len(gaps) <= 5 and all(r.reason == "timeout" for r in gaps)
    assert not readings[-1].gap and len(readings) >= 7
    # Retries stop in time for the next slot (deadline 50 ms before it; slack for a loaded machine).
    assert all(r.ts_ms - r.slot_ts_ms < 300 + 100 for r in readings)


def test_sunspec_inverter_discovery_identity_and_values():
    async def scenario():
        inverter = sunspec_inverter()
        port = free_port()
        await inverter.serve_tcp(port)
        poller = tcp_poller(port, SunSpecDriver())
        readings = [await poller.poll(0), await poller.poll(1)]
        requests = inverter.requests
        await inverter.stop()
        return readings, poller.driver, requests

    (first, second), driver, requests = run(scenario())
    assert driver.identity["manufacturer"] == "Fronius" and driver.identity["inverter_model"] == 103
    assert driver.identity["sunspec_base"] == 40000 and driver.identity["serial"] == "SN123456"
    assert first.values["power_w"] == -5000.0 and first.values["export_energy_wh"] == 12_345_678
    assert second.attempts == 1 and requests == first.attempts + 1   # discovered once, then one read


def test_sunspec_discovery_tries_the_other_base_addresses():
    async def scenario():
        inverter = sunspec_inverter(base=50000, model_id=101)
        port = free_port()
        await inverter.serve_tcp(port)
        poller = tcp_poller(port, SunSpecDriver())
        reading = await poller.poll(0)
        await inverter.stop()
        return reading, poller.driver

    reading, driver = run(scenario())
    assert not reading.gap and driver.identity["sunspec_base"] == 50000 and driver.identity["inverter_model"] == 101


def test_a_device_without_sunspec_is_a_gap_with_the_reason():
    async def scenario():
        meter = EastronEmulator(SDM630_VALUES)
        port = free_port()
        await meter.emu.serve_tcp(port)
        poller = tcp_poller(port, SunSpecDriver())
        reading = await poller.poll(0)
        await meter.emu.stop()
        return reading

    reading = run(scenario())
    assert reading.gap and reading.reason == "not_sunspec"


def test_cross_check_of_an_emulated_meter_against_node_circuits():
    # 15 simulated minutes: the meter's counters follow 2.4 kW import, polled every 60 s on a fake clock.
    clock_s = [0.0]
    import_kwh_at = lambda t_s: 12_000.0 + 2.4 * (t_s + 30) / 3600   # noqa: E731

    async def scenario():
        meter = EastronEmulator(SDM630_VALUES)
        port = free_port()
        await meter.emu.serve_tcp(port)
        poller = tcp_poller(port, driver_for("sdm630"), clock=lambda: clock_s[0])
        readings = []
        for t_s in range(-30, 15 * 60 + 31, 60):
            clock_s[0] = 1_800_000_000.0 + t_s
            meter.set(0x48, import_kwh_at(t_s))
            readings.append(await poller.poll(int(clock_s[0] * 1000)))
        await meter.emu.stop()
        return readings

    readings = run(scenario())
    start_ms = 1_800_000_000_000
    energy = meter_interval_energy(counter_samples(readings), start_ms)
    assert energy.import_wh == 600 and energy.export_wh == 0          # 2.4 kW × 0.25 h
    check = cross_check(energy, {"ev": (420, 0), "heat-pump": (150, 0), "kitchen": (40, 0), "pv": (0, 25)})
    assert check.discrepancy_wh == 15 and math.isclose(check.discrepancy_pct, 2.5) and check.within_tolerance


def test_rtu_over_a_pty_null_modem():
    async def scenario():
        cable = PtyNullModem()
        cable.start()
        meter = EastronEmulator(SDM120_VALUES)
        await meter.emu.serve_rtu(cable.ends[0], device_id=7)
        link = ModbusLink.rtu(cable.ends[1], baudrate=9600, device_id=7, timeout_s=TIMEOUT_S)
        poller = MeterPoller(link, driver_for("sdm120"), timeout_s=TIMEOUT_S, retry=FAST)
        ok = await poller.poll(0)
        meter.emu.silent = True
        silent = await poller.poll(1)
        meter.emu.silent = False
        meter.emu.busy_replies = 1
        busy = await poller.poll(2)
        link.close()
        await meter.emu.stop()
        cable.close()
        return ok, silent, busy, poller

    ok, silent, busy, poller = run(scenario())
    assert not ok.gap and ok.values["power_w"] == 1200.0 and ok.values["import_energy_wh"] == 512_250.0
    assert silent.gap and silent.reason == "timeout"
    assert not busy.gap and poller.counters["error:exception_6"] == 1
    # A stale reply to a timed-out request must never be decoded as the next one's answer.
    assert busy.values == ok.values


@pytest.mark.parametrize("kind", ["SDM120", "sdm630", "sunspec"])
def test_driver_for_known_kinds(kind):
    assert driver_for(kind) is not None


def test_driver_for_unknown_kind():
    with pytest.raises(ValueError, match="unknown meter kind"):
        driver_for("sdm72")
