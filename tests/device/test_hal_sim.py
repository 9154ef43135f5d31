"""ghnode.hal_sim's simulated ADC: the waveform's analytic figures, the ADC model and the clock."""
import math
import random

from ghnode.hal_sim import ADC_FULL_SCALE_UV, TICKS_PERIOD, ArrayADC, SimADC, SimClock, Waveform, mean_power


def test_waveform_rms_and_power_match_numeric_integration():
    v = Waveform(230, 50, 0, ((5, 0.04, 30),))
    i = Waveform(10, 50, -40, ((3, 0.3, 10), (5, 0.2, -60)))
    n = 2000  # one 20 ms cycle
    ms_i = p = 0.0
    for k in range(n):
        t_us = 20_000 * k / n
        ms_i += i.value(t_us) ** 2
        p += v.value(t_us) * i.value(t_us)
    assert abs(math.sqrt(ms_i / n) - i.rms()) < 1e-9 * i.rms()
    assert abs(p / n - mean_power(v, i)) < 1e-9 * abs(mean_power(v, i))
    assert abs(i.rms() - 10 * math.sqrt(1 + 0.09 + 0.04)) < 1e-12
    assert abs(mean_power(Waveform(230, 50), Waveform(10, 50, -60)) - 1150) < 1e-9


def test_reads_are_quantised_clamped_and_cost_time():
    clock = SimClock(0)
    wave = Waveform(100, 50)  # 100 A at 50 A/V: 2.83 V peak, far past both rails
    adc = SimADC(clock, wave, 50.0, read_cost_us=40)
    readings = [adc.read_uv() for _ in range(500)]
    assert clock.now_us == 500 * 40
    assert all(r % 1000 == 0 for r in readings)
    assert min(readings) == 0 and max(readings) == ADC_FULL_SCALE_UV
    assert readings[0] == 1_300_000  # t=0: the sine's zero, at the bias


def test_lead_shifts_the_sensor_output_earlier():
    clock = SimClock(0)
    adc = SimADC(clock, Waveform(10, 50), 50.0, lead_deg=90, read_cost_us=0)
    assert adc.read_uv() == 1_300_000 + int(10 * math.sqrt(2) / 50 * 1e6 / 1000 + 0.5) * 1000


def test_noise_has_the_requested_rms():
    random.seed(3)
    for kind in ("gauss", "uniform"):
        adc = SimADC(SimClock(), None, noise_uv=5000, noise=kind, quantum_uv=1)
        xs = [adc.read_uv() - 1_300_000 for _ in range(4000)]
        rms = math.sqrt(sum(x * x for x in xs) / len(xs))
        assert 4700 < rms < 5300, (kind, rms)


def test_unplugged_inputs_are_pinned():
    clock = SimClock()
    for mode, uv in (("bias", 1_250_000), ("low", 0), ("high", ADC_FULL_SCALE_UV)):
        adc = SimADC(clock, Waveform(10, 50), bias_uv=1_250_000, noise_uv=3000, unplugged=mode)
        assert {adc.read_uv() for _ in range(20)} == {uv}


def test_clock_has_micropython_ticks_semantics():
    clock = SimClock(TICKS_PERIOD - 1, tick_cost_us=5)
    a = clock.ticks_us()
    b = clock.ticks_us()
    assert a == TICKS_PERIOD - 1 and b == 4
    assert clock.ticks_diff(b, a) == 5 and clock.ticks_diff(a, b) == -5
    assert clock.ticks_add(a, 10) == 9


def test_array_adc_replays_in_a_loop():
    adc = ArrayADC.record(SimADC(SimClock(), Waveform(5, 50)), 3)
    replay = [adc.read_uv() for _ in range(7)]
    assert replay[:3] == replay[3:6] and replay[6] == replay[0]
