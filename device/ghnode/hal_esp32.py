"""ESP32 hardware access for the measurement inputs. Imported on the board only (needs `machine`).

Use ADC1 pins (GPIO32-39 on the ESP32): ADC2 is unusable while Wi-Fi is on. For sampler.sample()
the clock is the `time` module itself (ticks_us, ticks_diff, ticks_add).
"""
from machine import ADC, Pin


class Esp32ADC:
    """One ADC input at 11 dB attenuation (linear ~150-2450 mV), read in calibrated microvolts.

    read_uv is machine.ADC's own bound method, stored once, so `adc.read_uv` in the sampler's reads
    tuple calls straight into C: no Python wrapper frame per sample. Its values have 1 mV steps.
    """

    def __init__(self, pin):
        self.adc = ADC(Pin(pin), atten=ADC.ATTN_11DB)
        self.read_uv = self.adc.read_uv
