"""The household's utility meter (and a SunSpec inverter) over Modbus RTU or TCP.

Pure cores: `registers` (maps and decoders), `validate`, `crosscheck`. Services: `link.ModbusLink`
(pymodbus client) and `poller.MeterPoller` (slots, retries, gaps).
"""
from .crosscheck import (CounterSample, CrossCheck, IntervalEnergy, counter_samples, cross_check,
                         meter_interval_energy)
from .devices import EastronDriver, SunSpecDriver, driver_for
from .link import LinkError, ModbusLink
from .poller import MeterPoller, MeterReading, RetryPolicy
from .registers import SDM120, SDM630

__all__ = [
    "CounterSample", "CrossCheck", "EastronDriver", "IntervalEnergy", "LinkError", "MeterPoller",
    "MeterReading", "ModbusLink", "RetryPolicy", "SDM120", "SDM630", "SunSpecDriver", "counter_samples",
    "cross_check", "driver_for", "meter_interval_energy",
]
