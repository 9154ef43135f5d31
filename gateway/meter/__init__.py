"""The household's utility meter (and a SunSpec inverter) over Modbus RTU or TCP.

Pure cores: `registers` (maps and decoders), `validate`, `crosscheck`. Services: `link.ModbusLink`
(pymodbus client), `poller.MeterPoller` (slots, retries, gaps) and `service.MeterService` (the
gateway's poller task: readings and gaps stored, each interval cross-checked).
"""
from .crosscheck import (CounterSample, CrossCheck, IntervalEnergy, check_due, counter_samples, cross_check,
                         meter_interval_energy)
from .devices import EastronDriver, SunSpecDriver, driver_for
from .link import LinkError, ModbusLink
from .poller import MeterPoller, MeterReading, RetryPolicy
from .registers import SDM120, SDM630

__all__ = [
    "CounterSample", "CrossCheck", "EastronDriver", "IntervalEnergy", "LinkError", "MeterPoller",
    "MeterReading", "ModbusLink", "RetryPolicy", "SDM120", "SDM630", "SunSpecDriver", "check_due",
    "counter_samples", "cross_check", "driver_for", "meter_interval_energy",
]
