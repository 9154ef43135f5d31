"""Accuracy of ghnode.measure on simulated CT/VT waveforms whose answers are known analytically.

Reference front end: SCT-013-030 style CT (30 A rating) at 50 A per ADC volt, a 230 V voltage
transformer at 383 V per ADC volt, ESP32 read_uv() with 1 mV steps, 1 mV RMS gaussian ADC noise,
40 us per read (so channels read in sequence are skewed), sensor phase errors that are calibrated.
Runs unchanged on CPython and MicroPython.
"""
import math
import random

from ghnode.hal_sim import SimADC, SimClock, Waveform, mean_power
from ghnode.measure import (ADC_BIAS_UV, EXPORT, IMPORT, UNKNOWN, CTCal, Meter, VTCal, adc_status,
                            headroom_uv)

A_PER_V = 50.0
V_PER_V = 383.0
RATING_A = 30
CT_LEAD_DEG = 2.0  # the simulated CTs lead by this much; CTCal.phase_deg calibrates it out
VT_LEAD_DEG = -1.0
V_HARMONICS = ((3, 0.01, 0), (5, 0.03, 10))
I_HARMONICS = ((3, 0.3, 20), (5, 0.15, -40), (7, 0.05, 100))  # a rectifier-like load


def measure(currents, voltage=None, noise_uv=1000, start_us=4321, cal_phase=True, offset_ma=0, **meter_kw):
    """One window through a Meter: currents are Waveforms or "bias"/"low"/"high" (unplugged CTs)."""
    random.seed(7)
    clock = SimClock(start_us, tick_cost_us=4)  # coarser than a board (~1 us): fewer busy-wait spins
    adcs = []
    if voltage:
        adcs.append(SimADC(clock, voltage, V_PER_V, bias_uv=1_350_000, lead_deg=VT_LEAD_DEG, noise_uv=noise_uv))
    for k, wave in enumerate(currents):
        if isinstance(wave, str):
            adcs.append(SimADC(clock, None, A_PER_V, unplugged=wave))
        else:  # biases that differ per channel and from the nominal: DC offset removal must cope
            adcs.append(SimADC(clock, wave, A_PER_V, bias_uv=1_250_000 + 30_000 * k, lead_deg=CT_LEAD_DEG,
                               noise_uv=noise_uv))
    cts = [CTCal(A_PER_V, CT_LEAD_DEG if cal_phase else 0.0, offset_ma, rating_a=RATING_A) for _ in currents]
    vt = VTCal(V_PER_V, VT_LEAD_DEG if cal_phase else 0.0) if voltage else None
    return Meter(cts, vt, **meter_kw).measure(tuple(a.read_uv for a in adcs), clock)


def rel_err(measured, exact):
    return abs(measured / exact - 1)


def check_channel(row, v, i, tol=0.005):
    """Irms and real power within tol of reading, against the waveforms' analytic values."""
    irms_ma = i.rms() * 1000
    power_mw = mean_power(v, i) * 1000
    assert not row["open"] and not row["clipped"], row
    assert rel_err(row["irms_ma"], irms_ma) < tol, (row, irms_ma)
    assert rel_err(row["power_mw"], power_mw) < tol, (row, power_mw)
    assert row["power_w"] == (row["power_mw"] + 500) // 1000
    va = v.rms() * i.rms()
    assert abs(row["va"] - va) <= max(1, va * tol), (row, va)
    assert abs(row["pf_x1000"] - abs(power_mw) / va) <= 1000 * tol + 1, row
    assert row["direction"] == (IMPORT if power_mw > 0 else EXPORT)


def test_irms_and_power_within_half_percent_from_10_to_120_percent_of_rating():
    # (amps, phase vs voltage in deg, harmonics): 10 % .. 120 % of 30 A; lagging, leading, PF 0.5..1.
    # Peaky harmonics only where the crest stays inside the ADC's linear range.
    windows = [
        (49.7, [(3, 0, I_HARMONICS), (3.6, -60, I_HARMONICS), (9, -30, I_HARMONICS)]),
        (50.0, [(12, 45, I_HARMONICS), (18, 0, ()), (24, -60, ())]),
        (50.3, [(30, -30, ((3, 0.05, 0),)), (36, 0, ()), (36, -60, ())]),
        (49.8, [(6, 180, I_HARMONICS), (15, 150, ()), (27, -20, ((5, 0.05, 30),))]),  # exporting
    ]
    for f, loads in windows:
        v = Waveform(230, f, 0, V_HARMONICS)
        currents = [Waveform(a, f, ph, h) for a, ph, h in loads]
        out = measure(currents, v)
        assert out["v_measured"] and not out["v_clipped"]
        assert rel_err(out["vrms_mv"], v.rms() * 1000) < 0.005, out
        assert abs(out["freq_mhz"] - f * 1000) <= 10, out
        for row, i in zip(out["channels"], currents):
            check_channel(row, v, i)


def test_window_of_10_4_cycles_is_trimmed_to_whole_cycles():
    # cycles=9 samples 10.5 nominal cycles: at 49.7 Hz the buffer holds 10.44 cycles.
    v = Waveform(230, 49.7, 0, V_HARMONICS)
    currents = [Waveform(10, 49.7, -50, I_HARMONICS), Waveform(20, 49.7, 30)]
    out = measure(currents, v, cycles=9)
    for row, i in zip(out["channels"], currents):
        check_channel(row, v, i)


def test_phase_calibration_and_skew_compensation_are_needed_and_work():
    v = Waveform(230, 50, 0)
    i = Waveform(20, 50, -60)  # PF 0.5: power is most sensitive to phase error here
    uncal = measure([i], v, cal_phase=False)["channels"][0]
    assert rel_err(uncal["power_mw"], mean_power(v, i) * 1000) > 0.02  # 3 deg of sensor error
    check_channel(measure([i], v)["channels"][0], v, i)


def test_60_hz_mains():
    v = Waveform(120, 59.9, 0)
    i = Waveform(15, 59.9, -25, I_HARMONICS)
    out = measure([i], v, freq_hz=60)
    assert abs(out["freq_mhz"] - 59900) <= 10
    check_channel(out["channels"][0], v, i)


def test_ct_only_reports_irms_and_apparent_power_at_nominal_voltage():
    for amps, f in ((3, 49.7), (12, 50.2), (36, 50.0)):
        i = Waveform(amps, f, -30, I_HARMONICS if amps < 20 else ())
        out = measure([i], nominal_v=230)
        row = out["channels"][0]
        assert out["vrms_mv"] is None and not out["v_measured"]
        assert rel_err(row["irms_ma"], i.rms() * 1000) < 0.005, row
        assert abs(row["va"] - 230 * i.rms()) <= 0.005 * 230 * i.rms()
        assert row["power_w"] == row["va"] and row["direction"] == UNKNOWN


def test_zero_current_reads_zero_not_noise():
    v = Waveform(230, 50, 0)
    zero = Waveform(0, 50)
    for noise_uv in (1000, 3000):  # 3 mV of noise is 150 mA RMS at 50 A/V: under the 300 mA floor
        out = measure([zero], v, noise_uv=noise_uv)
        row = out["channels"][0]
        assert row["irms_ma"] == 0 and row["power_w"] == 0 and row["power_mw"] == 0, row
        assert not row["open"] and row["direction"] == UNKNOWN
        assert measure([zero], noise_uv=noise_uv)["channels"][0]["irms_ma"] == 0


def test_noise_offset_calibration_removes_phantom_current():
    zero = Waveform(0, 50)
    noisy = 8000  # 8 mV of ADC noise: 400 mA RMS at 50 A/V, above the 300 mA floor
    assert 340 < measure([zero], noise_uv=noisy)["channels"][0]["irms_ma"] < 460
    assert measure([zero], noise_uv=noisy, offset_ma=400)["channels"][0]["irms_ma"] == 0
    i = Waveform(20, 50, 0)
    row = measure([i], noise_uv=noisy, offset_ma=400)["channels"][0]
    assert rel_err(row["irms_ma"], i.rms() * 1000) < 0.005


def test_unplugged_ct_is_flagged_open_and_reads_zero():
    v = Waveform(230, 50, 0)
    live = Waveform(10, 50, -30)
    out = measure([live, "bias", "low", "high"], v)
    check_channel(out["channels"][0], v, live)
    for row in out["channels"][1:]:
        assert row["open"] and row["irms_ma"] == 0 and row["power_w"] == 0 and row["va"] == 0, row
    assert measure(["bias"])["channels"][0]["open"]


def test_clipping_is_flagged():
    v = Waveform(230, 50, 0)
    row = measure([Waveform(50, 50, 0)], v)["channels"][0]  # 1.41 V peak: past the 1.15 V headroom
    assert row["clipped"] and not row["open"] and row["irms_ma"] > 0


def test_voltage_unplugged_falls_back_to_nominal():
    random.seed(7)
    i = Waveform(10, 50, -30)
    clock = SimClock(99)
    vadc = SimADC(clock, None, V_PER_V, unplugged="bias")
    iadc = SimADC(clock, i, A_PER_V, noise_uv=1000)
    out = Meter([CTCal(A_PER_V)], VTCal(V_PER_V)).measure((vadc.read_uv, iadc.read_uv), clock)
    row = out["channels"][0]
    assert out["v_open"] and not out["v_measured"] and out["freq_mhz"] is None
    assert rel_err(row["irms_ma"], i.rms() * 1000) < 0.005
    assert abs(row["va"] - 230 * row["irms_ma"] / 1000) < 1 and row["direction"] == UNKNOWN


def test_rated_current_fits_the_adc_headroom():
    peak_uv = RATING_A * 1.2 * math.sqrt(2) / A_PER_V * 1e6
    assert peak_uv < headroom_uv(ADC_BIAS_UV) == 1_150_000
    assert headroom_uv(1_650_000) == 800_000  # a VCC/2 bias would clip 120 % of rating


def test_adc_status():
    assert adc_status(1_300_000, 1_301_000, 0, 100) == (True, False)  # pinned at the bias
    assert adc_status(0, 40_000, 100, 100) == (True, False)  # floating at a rail
    assert adc_status(100_000, 2_500_000, 6, 100) == (False, True)  # peaks clipped
    assert adc_status(1_200_000, 1_400_000, 0, 100) == (False, False)
