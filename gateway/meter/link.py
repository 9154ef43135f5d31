"""One Modbus device on one bus: pymodbus client calls turned into registers or a typed failure.

pymodbus' own retries and automatic reconnects are switched off: the poller owns the retry policy,
so timing is bounded and every failure is seen and counted there.
"""
from __future__ import annotations

import logging

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from .registers import HOLDING, INPUT

# The poller counts every failure and logs each reason once; pymodbus would log every failed request
# (with packet dumps) at ERROR, which on a dead bus floods the gateway's log.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

# Exception codes worth retrying: the device is busy or a gateway in between did not get through.
# Illegal function/address/value (1, 2, 3) will not change on a retry.
TRANSIENT_EXCEPTION_CODES = frozenset({4, 5, 6, 10, 11})


class LinkError(Exception):
    """A read that did not return registers. `reason` is a short code the poller counts by."""

    def __init__(self, reason, detail="", transient=True):
        super().__init__(reason + (": " + detail if detail else ""))
        self.reason = reason
        self.transient = transient


class ModbusLink:
    """Reads registers of one device (unit `device_id`) over an async pymodbus client."""

    def __init__(self, client, device_id=1, describe=""):
        self.client = client
        self.device_id = device_id
        self.describe = describe

    @classmethod
    def tcp(cls, host, port=502, device_id=1, timeout_s=1.0):
        client = AsyncModbusTcpClient(host, port=port, timeout=timeout_s, retries=0, reconnect_delay=0)
        return cls(client, device_id, f"tcp://{host}:{port}/{device_id}")

    @classmethod
    def rtu(cls, port, baudrate=9600, parity="N", stopbits=1, device_id=1, timeout_s=1.0):
        # Eastron meters ship at 9600 8N1 (2400 on some SDM120 firmware); configurable on the meter.
        client = AsyncModbusSerialClient(port, framer=FramerType.RTU, baudrate=baudrate, parity=parity,
                                         stopbits=stopbits, timeout=timeout_s, retries=0, reconnect_delay=0)
        return cls(client, device_id, f"rtu://{port}@{baudrate}/{device_id}")

    async def read(self, table, address, count):
        """The `count` registers at `address` of the input or holding table; raises LinkError."""
        if not self.client.connected and not await self.client.connect():
            raise LinkError("connect_failed", self.describe)
        call = {INPUT: self.client.read_input_registers, HOLDING: self.client.read_holding_registers}[table]
        try:
            response = await call(address, count=count, device_id=self.device_id)
        except ConnectionException as e:
            raise LinkError("connection_lost", str(e)) from None
        except ModbusIOException as e:
            # pymodbus raises this for "no response" and for a reply to another transaction.
            reason = "timeout" if "No response" in str(e) else "bad_response"
            raise LinkError(reason, str(e)) from None
        except ModbusException as e:
            raise LinkError("bad_response", str(e)) from None
        if response.isError():
            code = response.exception_code
            raise LinkError(f"exception_{code}", f"{table} {address}+{count}",
                            transient=code in TRANSIENT_EXCEPTION_CODES)
        if len(response.registers) != count:
            # On RS-485 a late reply to an earlier request can land here: never decode it.
            raise LinkError("bad_response", f"{len(response.registers)} registers, asked {count}")
        return list(response.registers)

    def close(self):
        self.client.close()
