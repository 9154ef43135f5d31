"""Real pymodbus servers emulating an Eastron SDM630/SDM120 and a SunSpec inverter.

The register tables here are typed in from Eastron's and SunSpec's published tables on their own,
not taken from gridhive's maps, so a wrong address in gridhive shows up as a wrong value.
"""
import asyncio
import os
import struct
import time

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

# Eastron SDM630 input registers (0-based address -> float32), values of a 3-phase home.
SDM630_VALUES = {
    0x00: 231.5, 0x02: 229.8, 0x04: 232.1,          # phase L-N volts
    0x06: 10.25, 0x08: 4.5, 0x0A: 0.75,             # phase currents A
    0x0C: 2300.0, 0x0E: 1000.0, 0x10: -150.0,       # phase powers W
    0x12: 2373.0, 0x14: 1034.0, 0x16: 174.0,        # phase VA
    0x18: 300.0, 0x1A: 120.0, 0x1C: 80.0,           # phase VAr
    0x1E: 0.97, 0x20: 0.96, 0x22: -0.86,            # phase power factors
    0x34: 3150.0,                                   # total system power W
    0x38: 3581.0, 0x3C: 500.0, 0x3E: 0.88,          # total VA, VAr, PF
    0x46: 50.02,                                    # frequency Hz
    0x48: 12345.67, 0x4A: 2345.5,                   # import / export active energy kWh
    0x4C: 100.0, 0x4E: 50.0,                        # import / export reactive energy kVArh
}
SDM120_VALUES = {0x00: 230.2, 0x06: 5.5, 0x0C: 1200.0, 0x12: 1266.0, 0x18: 150.0, 0x1E: 0.95,
                 0x46: 49.98, 0x48: 512.25, 0x4A: 0.0}


def f32_regs(value):
    return list(struct.unpack(">HH", struct.pack(">f", value)))


def ascii_regs(text, n_regs):
    raw = text.encode().ljust(2 * n_regs, b"\0")
    return list(struct.unpack(">%dH" % n_regs, raw))


class Emulator:
    """Registers in a dict, copied into the pymodbus device on every request, plus fault switches."""

    def __init__(self, table, registers):
        self.table = table            # "input" or "holding"
        self.registers = registers    # {address: 16-bit value}
        self.silent = False           # swallow every reply (a meter that stopped answering)
        self.busy_replies = 0         # answer the next N requests with exception 6 (device busy)
        self.requests = 0
        self.server = None

    def device(self, device_id=1):
        # Registers from the lowest to the highest defined address exist; others are illegal addresses.
        low, high = min(self.registers), max(self.registers)
        block = [SimData(low, count=high - low + 1, values=0, datatype=DataType.REGISTERS)]
        bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
        other = [SimData(0, values=0, datatype=DataType.REGISTERS)]
        tables = (bits, bits, block, other) if self.table == "holding" else (bits, bits, other, block)
        return SimDevice(device_id, simdata=tables, action=self.action)

    async def action(self, _fc, start_address, _address, _count, registers, _set_values):
        self.requests += 1
        if self.busy_replies > 0:
            self.busy_replies -= 1
            return ExcCodes.DEVICE_BUSY
        for addr, value in self.registers.items():
            registers[addr - start_address] = value
        return None

    def trace_packet(self, sending, data):
        return b"" if sending and self.silent else data

    async def serve_tcp(self, port, device_id=1):
        self.server = ModbusTcpServer(self.device(device_id), address=("127.0.0.1", port),
                                      trace_packet=self.trace_packet)
        await self.server.serve_forever(background=True)
        return self.server

    async def serve_rtu(self, tty, device_id=1, baudrate=9600):
        self.server = ModbusSerialServer(self.device(device_id), framer=FramerType.RTU, port=tty,
                                         baudrate=baudrate, trace_packet=self.trace_packet)
        await self.server.serve_forever(background=True)
        return self.server

    async def stop(self):
        if self.server:
            await self.server.shutdown()
            self.server = None


def eastron(values):
    regs = {}
    for addr, value in values.items():
        regs[addr], regs[addr + 1] = f32_regs(value)
    return Emulator("input", regs)


class EastronEmulator:
    """Builds an Emulator and lets a test change a float parameter by its Eastron address."""

    def __init__(self, values):
        self.values = dict(values)
        self.emu = eastron(self.values)

    def set(self, address, value):
        self.values[address] = value
        self.emu.registers[address], self.emu.registers[address + 1] = f32_regs(value)


class RisingEastron(Emulator):
    """An Eastron meter whose import and export kWh registers rise at constant power from the moment
    it is made, stored as float32 like the real meter's: a test knows the energy of any span exactly."""

    def __init__(self, values, import_w, export_w, clock=time.time):
        super().__init__("input", eastron(values).registers)
        self.import_w, self.export_w, self.clock = import_w, export_w, clock
        self.t0, self.base_kwh = clock(), (values[0x48], values[0x4A])

    def counters_kwh(self, t):
        hours = (t - self.t0) / 3600
        return self.base_kwh[0] + self.import_w * hours / 1000, self.base_kwh[1] + self.export_w * hours / 1000

    async def action(self, *args):
        for address, kwh in zip((0x48, 0x4A), self.counters_kwh(self.clock())):
            self.registers[address], self.registers[address + 1] = f32_regs(kwh)
        return await super().action(*args)


def sunspec_inverter(base=40000, model_id=103, wh=12_345_678):
    """A three-phase SunSpec inverter: SunS, common model (L=66), inverter model (L=50), end model."""
    common = ascii_regs("Fronius", 16) + ascii_regs("Symo 5.0-3-M", 16) + ascii_regs("", 8) \
        + ascii_regs("3.14.1", 8) + ascii_regs("SN123456", 16) + [1, 0x8000]
    inv = [0] * 50
    inv[0:5] = [1234, 411, 412, 411, 0xFFFE]          # A, AphA..C, A_SF = -2  -> 12.34 A
    inv[5:12] = [4000, 4001, 3999, 2301, 2302, 2300, 0xFFFF]  # PPV.., PhV.. , V_SF = -1
    inv[12:14] = [5000, 0]                            # W = 5000, W_SF = 0
    inv[14:16] = [5001, 0xFFFE]                       # Hz = 50.01
    inv[16:18] = [5100, 0]                            # VA
    inv[18:20] = [0x8000, 0x8000]                     # VAr not implemented, VAr_SF not implemented
    inv[20:22] = [990, 0xFFFF]                        # PF = 99.0 %
    inv[22:25] = [wh >> 16, wh & 0xFFFF, 0]           # WH acc32, WH_SF = 0
    inv[25:31] = [0xFFFF, 0x8000, 0xFFFF, 0x8000, 5200, 0]  # DCA/DCV not implemented; DCW = 5200 W
    inv[31:36] = [452, 0x8000, 0x8000, 0x8000, 0xFFFF]  # TmpCab 45.2 °C (Tmp_SF = -1)
    inv[36:38] = [4, 0xFFFF]                          # St = 4 (MPPT)
    words = [0x5375, 0x6E53, 1, len(common)] + common + [model_id, 50] + inv + [0xFFFF, 0]
    return Emulator("holding", {base + i: w for i, w in enumerate(words)})


class PtyNullModem:
    """Two pseudo-terminals joined like a null-modem cable: what one end writes, the other reads."""

    def __init__(self):
        self._pairs = [os.openpty(), os.openpty()]
        self.ends = [os.ttyname(slave) for _, slave in self._pairs]
        self._loop = None

    def start(self):
        self._loop = asyncio.get_running_loop()
        (m1, _), (m2, _) = self._pairs
        self._loop.add_reader(m1, self._copy, m1, m2)
        self._loop.add_reader(m2, self._copy, m2, m1)

    @staticmethod
    def _copy(src, dst):
        try:
            os.write(dst, os.read(src, 4096))
        except OSError:
            pass

    def close(self):
        for master, slave in self._pairs:
            if self._loop:
                self._loop.remove_reader(master)
            os.close(master)
            os.close(slave)
