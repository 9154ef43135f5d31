"""Pure cores of the meter: register maps and decoders, validation, the interval cross-check."""
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridhive.gateway.meter.crosscheck import (CounterSample, IntervalEnergy, counters_at, cross_check,
                                               meter_interval_energy)
from gridhive.gateway.meter.registers import (MAX_READ_REGS, SDM120, SDM630, decode_common, decode_eastron,
                                              decode_inverter, float32_be, plan_reads)
from gridhive.gateway.meter.validate import check_counters, validate

from emulators import SDM120_VALUES, SDM630_VALUES, f32_regs, sunspec_inverter


def test_float32_is_big_endian_high_word_first():
    assert float32_be(0x4366, 0x0000) == 230.0
    assert float32_be(*f32_regs(-150.0)) == -150.0


@pytest.mark.parametrize("dmap,table", [(SDM630, SDM630_VALUES), (SDM120, SDM120_VALUES)])
def test_eastron_maps_decode_the_published_registers(dmap, table):
    regs = {}
    for addr, value in table.items():
        regs[addr], regs[addr + 1] = f32_regs(value)
    values = decode_eastron(dmap, regs)
    assert math.isclose(values["import_energy_wh"], table[0x48] * 1000, rel_tol=1e-7)
    assert math.isclose(values["export_energy_wh"], table[0x4A] * 1000, rel_tol=1e-7, abs_tol=1e-9)
    assert math.isclose(values["frequency_hz"], table[0x46], rel_tol=1e-6)
    assert math.isclose(values["power_w"], table[0x34 if dmap is SDM630 else 0x0C], rel_tol=1e-6)
    assert math.isclose(values["voltage_l1_v"], table[0x00], rel_tol=1e-6)


def test_sdm630_reads_only_defined_parameters_in_few_requests():
    spans = plan_reads([(f.address, 2) for f in SDM630.fields])
    assert spans == [(0x00, 18), (0x1E, 6), (0x34, 2), (0x38, 2), (0x3C, 4), (0x46, 6)]


@given(st.lists(st.tuples(st.integers(0, 2000), st.integers(1, 4)), min_size=1, max_size=60),
       st.integers(0, 10), st.integers(8, MAX_READ_REGS))
def test_plan_reads_covers_every_span_within_limits(spans, max_gap, max_regs):
    reads = plan_reads(spans, max_regs=max_regs, max_gap_regs=max_gap)
    for address, length in spans:
        assert any(s <= address and address + length <= s + c for s, c in reads)
    assert all(c <= max(max_regs, 4) for _, c in reads)
    assert all(b[0] >= a[0] + a[1] for a, b in zip(reads, reads[1:]))


def test_sunspec_inverter_applies_scale_factors_and_skips_unimplemented_points():
    emu = sunspec_inverter()
    regs = [emu.registers[40000 + 2 + 2 + 66 + 2 + i] for i in range(50)]
    values = decode_inverter(regs)
    assert values["current_a"] == 12.34
    assert values["voltage_l1_v"] == 230.1
    assert values["power_w"] == -5000.0          # production, household sign convention
    assert values["frequency_hz"] == 50.01
    assert values["power_factor"] == 0.99
    assert values["export_energy_wh"] == 12_345_678
    assert values["dc_power_w"] == 5200.0
    assert values["cabinet_temperature_c"] == 45.2
    assert "reactive_power_var" not in values     # VAr = 0x8000: not implemented
    assert "import_energy_wh" not in values


def test_sunspec_common_model_strings():
    emu = sunspec_inverter()
    regs = [emu.registers[40004 + i] for i in range(66)]
    ident = decode_common(regs)
    assert ident["manufacturer"] == "Fronius" and ident["serial"] == "SN123456" and ident["version"] == "3.14.1"


def test_validate_rejects_nan_inf_and_out_of_range_values():
    q = {"voltage_l1_v": "voltage_v", "power_w": "power_w", "frequency_hz": "frequency_hz",
         "power_factor": "power_factor"}
    accepted, rejected = validate({"voltage_l1_v": float("nan"), "power_w": float("-inf"),
                                   "frequency_hz": 3.4e38, "power_factor": 0.5, "operating_state": 4.0}, q)
    assert rejected == {"voltage_l1_v": "nan", "power_w": "inf", "frequency_hz": "out_of_range"}
    assert accepted == {"power_factor": 0.5, "operating_state": 4.0}


def test_counters_never_decrease_nor_outrun_the_largest_power():
    prev = {"import_energy_wh": (1_000_000.0, 0), "export_energy_wh": (5_000.0, 0)}
    ok = {"import_energy_wh": 1_000_500.0, "export_energy_wh": 5_000.0}
    assert check_counters(prev, ok, 10_000) == {}
    assert check_counters(prev, {"import_energy_wh": 999_000.0}, 10_000) == {"import_energy_wh": "counter_decreased"}
    # 1 MW for 10 s is 2.8 kWh; 100 kWh in 10 s is impossible, in an hour it is not.
    assert check_counters(prev, {"export_energy_wh": 105_000.0}, 10_000) == {"export_energy_wh": "counter_jump"}
    assert check_counters(prev, {"export_energy_wh": 105_000.0}, 3_600_000) == {}
    assert check_counters({}, ok, 10_000) == {}


def test_counters_interpolate_between_the_readings_around_a_boundary():
    samples = [CounterSample(0, 1000.0, 0.0), CounterSample(10_000, 1100.0, 20.0)]
    assert counters_at(samples, 2_500, 60_000) == (1025.0, 5.0)
    assert counters_at(samples, 10_000, 60_000) == (1100.0, 20.0)
    assert counters_at(samples, 20_000, 60_000) is None           # nothing after
    assert counters_at(samples, 5_000, 5_000) is None             # bracket too wide


def test_interval_energy_and_cross_check():
    minute = 60_000
    # 2 kW import for 15 min = 500 Wh; readings every 50 s starting 20 s before the interval.
    samples = [CounterSample(t, 10_000 + 2000 * (t + 20_000) / 3_600_000, 0.0)
               for t in range(-20_000, 16 * minute, 50_000)]
    energy = meter_interval_energy(samples, 0)
    assert energy == IntervalEnergy(0, 15 * minute, 500, 0)
    check = cross_check(energy, {"ev": (300, 0), "heat-pump": (150, 0), "pv": (0, 10)})
    assert (check.circuits_import_wh, check.circuits_export_wh) == (450, 10)
    assert check.discrepancy_wh == 60 and check.discrepancy_pct == 12.0 and not check.within_tolerance
    close = cross_check(energy, {"all": (490, 0)})
    assert close.discrepancy_wh == 10 and close.discrepancy_pct == 2.0 and close.within_tolerance


def test_interval_energy_needs_readings_near_both_boundaries():
    samples = [CounterSample(-10_000, 0.0, 0.0), CounterSample(10_000, 5.0, 0.0),
               CounterSample(20 * 60_000, 50.0, 0.0)]  # a 20-minute gap across the end boundary
    assert meter_interval_energy(samples, 0) is None


def test_cross_check_of_a_quiet_interval():
    check = cross_check(IntervalEnergy(0, 900_000, 0, 0), {"fridge": (3, 0)})
    assert check.discrepancy_pct is None and check.within_tolerance and check.discrepancy_wh == -3
