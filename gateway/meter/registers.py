"""Register maps of the meters and inverters the gateway reads (data, in one place) and pure decoders.

Addresses are 0-based protocol addresses (Eastron's "30001" is address 0; SunSpec's "40001" is 40000).

Every device is read as a meter at its own connection point with the household's sign convention:
`power_w` + import, − export; `import_energy_wh` / `export_energy_wh` counters that never decrease.
An inverter therefore reports its production as negative `power_w` and as `export_energy_wh`.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

# Physical ranges a value must fall in to be accepted (NaN/inf are always refused). Wide enough for
# any household connection point (3 × 400 V × 250 A ≈ 173 kW), narrow enough to catch garbage such as
# an uninitialised float32 (±3.4e38) or a byte-swapped register pair.
LIMITS = {
    "voltage_v": (0.0, 500.0),
    "current_a": (-2000.0, 2000.0),
    "power_w": (-1.0e6, 1.0e6),
    "power_va": (-1.0e6, 1.0e6),
    "power_var": (-1.0e6, 1.0e6),
    "power_factor": (-1.0, 1.0),
    "frequency_hz": (40.0, 70.0),
    "energy_wh": (0.0, 1.0e12),
    "temperature_c": (-60.0, 150.0),
}

INPUT = "input"      # function code 4
HOLDING = "holding"  # function code 3
MAX_READ_REGS = 125  # Modbus limit for one read of 16-bit registers


@dataclass(frozen=True)
class FloatField:
    """An IEEE-754 float32 in two registers, high word first (Eastron's layout)."""
    name: str
    address: int
    quantity: str          # key of LIMITS
    scale: float = 1.0     # multiply the register value by this (kWh -> Wh: 1000)


@dataclass(frozen=True)
class EastronMap:
    model: str
    table: str
    fields: tuple[FloatField, ...]
    # Eastron's tables do not promise that reserved registers between parameters can be read, so
    # requests span only defined parameters unless the map says otherwise.
    max_gap_regs: int = 0


_KWH = 1000.0
SDM120 = EastronMap("SDM120", INPUT, (
    FloatField("voltage_l1_v", 0x0000, "voltage_v"),
    FloatField("current_l1_a", 0x0006, "current_a"),
    FloatField("power_w", 0x000C, "power_w"),
    FloatField("apparent_power_va", 0x0012, "power_va"),
    FloatField("reactive_power_var", 0x0018, "power_var"),
    FloatField("power_factor", 0x001E, "power_factor"),
    FloatField("frequency_hz", 0x0046, "frequency_hz"),
    FloatField("import_energy_wh", 0x0048, "energy_wh", _KWH),
    FloatField("export_energy_wh", 0x004A, "energy_wh", _KWH),
))

SDM630 = EastronMap("SDM630", INPUT, (
    FloatField("voltage_l1_v", 0x0000, "voltage_v"),
    FloatField("voltage_l2_v", 0x0002, "voltage_v"),
    FloatField("voltage_l3_v", 0x0004, "voltage_v"),
    FloatField("current_l1_a", 0x0006, "current_a"),
    FloatField("current_l2_a", 0x0008, "current_a"),
    FloatField("current_l3_a", 0x000A, "current_a"),
    FloatField("power_l1_w", 0x000C, "power_w"),
    FloatField("power_l2_w", 0x000E, "power_w"),
    FloatField("power_l3_w", 0x0010, "power_w"),
    FloatField("power_factor_l1", 0x001E, "power_factor"),
    FloatField("power_factor_l2", 0x0020, "power_factor"),
    FloatField("power_factor_l3", 0x0022, "power_factor"),
    FloatField("power_w", 0x0034, "power_w"),               # total system power
    FloatField("apparent_power_va", 0x0038, "power_va"),
    FloatField("reactive_power_var", 0x003C, "power_var"),
    FloatField("power_factor", 0x003E, "power_factor"),
    FloatField("frequency_hz", 0x0046, "frequency_hz"),
    FloatField("import_energy_wh", 0x0048, "energy_wh", _KWH),
    FloatField("export_energy_wh", 0x004A, "energy_wh", _KWH),
))

EASTRON_MAPS = {m.model: m for m in (SDM120, SDM630)}


def plan_reads(spans, max_regs=MAX_READ_REGS, max_gap_regs=0):
    """Group (address, length) spans into as few reads as allowed: [(start, count), ...]."""
    reads = []
    for address, length in sorted(spans):
        if reads:
            start, count = reads[-1]
            end = start + count
            if address - end <= max_gap_regs and max(end, address + length) - start <= max_regs:
                reads[-1] = (start, max(end, address + length) - start)
                continue
        reads.append((address, length))
    return reads


def float32_be(hi, lo):
    return struct.unpack(">f", struct.pack(">HH", hi, lo))[0]


def decode_eastron(dmap, regs):
    """{field name: value} from {address: register}; values not yet validated (may be NaN)."""
    return {f.name: float32_be(regs[f.address], regs[f.address + 1]) * f.scale for f in dmap.fields}


# --- SunSpec -----------------------------------------------------------------------------------

SUNS_MARKER = (0x5375, 0x6E53)        # "SunS"
SUNSPEC_BASES = (40000, 0, 50000)     # where the specification lets a device put the marker
END_MODEL_ID = 0xFFFF
COMMON_MODEL_ID = 1
INVERTER_MODEL_IDS = (101, 102, 103)  # single, split and three phase; the same 50-register layout
INVERTER_MODEL_LEN = 50

# Values a device sends for a point it does not implement.
_NOT_IMPLEMENTED = {"u16": 0xFFFF, "i16": 0x8000, "enum16": 0xFFFF, "sunssf": 0x8000, "acc32": 0}


@dataclass(frozen=True)
class SunSpecPoint:
    """A point of a SunSpec model: offset after the model's ID and L registers."""
    point: str
    offset: int
    type: str                 # u16, i16, acc32, enum16, sunssf
    sf: str | None = None     # the scale factor point, value = raw × 10^sf
    name: str | None = None   # our field name (None: read only as a scale factor)
    quantity: str | None = None
    scale: float = 1.0        # applied after the scale factor (percent -> ratio, sign convention)


# Inverter models 101/102/103 (integer + scale factor). W is the inverter's output, so it is negated
# into the household convention; WH (lifetime production) becomes the export counter.
INVERTER_POINTS = (
    SunSpecPoint("A", 0, "u16", "A_SF", "current_a", "current_a"),
    SunSpecPoint("AphA", 1, "u16", "A_SF", "current_l1_a", "current_a"),
    SunSpecPoint("AphB", 2, "u16", "A_SF", "current_l2_a", "current_a"),
    SunSpecPoint("AphC", 3, "u16", "A_SF", "current_l3_a", "current_a"),
    SunSpecPoint("A_SF", 4, "sunssf"),
    SunSpecPoint("PhVphA", 8, "u16", "V_SF", "voltage_l1_v", "voltage_v"),
    SunSpecPoint("PhVphB", 9, "u16", "V_SF", "voltage_l2_v", "voltage_v"),
    SunSpecPoint("PhVphC", 10, "u16", "V_SF", "voltage_l3_v", "voltage_v"),
    SunSpecPoint("V_SF", 11, "sunssf"),
    SunSpecPoint("W", 12, "i16", "W_SF", "power_w", "power_w", -1.0),
    SunSpecPoint("W_SF", 13, "sunssf"),
    SunSpecPoint("Hz", 14, "u16", "Hz_SF", "frequency_hz", "frequency_hz"),
    SunSpecPoint("Hz_SF", 15, "sunssf"),
    SunSpecPoint("VA", 16, "i16", "VA_SF", "apparent_power_va", "power_va"),
    SunSpecPoint("VA_SF", 17, "sunssf"),
    SunSpecPoint("VAr", 18, "i16", "VAr_SF", "reactive_power_var", "power_var"),
    SunSpecPoint("VAr_SF", 19, "sunssf"),
    SunSpecPoint("PF", 20, "i16", "PF_SF", "power_factor", "power_factor", 0.01),  # percent
    SunSpecPoint("PF_SF", 21, "sunssf"),
    SunSpecPoint("WH", 22, "acc32", "WH_SF", "export_energy_wh", "energy_wh"),
    SunSpecPoint("WH_SF", 24, "sunssf"),
    SunSpecPoint("DCW", 29, "i16", "DCW_SF", "dc_power_w", "power_w"),
    SunSpecPoint("DCW_SF", 30, "sunssf"),
    SunSpecPoint("TmpCab", 31, "i16", "Tmp_SF", "cabinet_temperature_c", "temperature_c"),
    SunSpecPoint("Tmp_SF", 35, "sunssf"),
    SunSpecPoint("St", 36, "enum16", None, "operating_state"),
)

# Common model (1): identity strings, two ASCII characters per register, NUL padded.
COMMON_STRINGS = (("manufacturer", 0, 16), ("model", 16, 16), ("options", 32, 8), ("version", 40, 8),
                  ("serial", 48, 16))


def _unsigned(regs, point):
    if point.type == "acc32":
        return (regs[point.offset] << 16) | regs[point.offset + 1]
    return regs[point.offset]


def _raw(regs, point):
    value = _unsigned(regs, point)
    if point.type in ("i16", "sunssf") and value & 0x8000:
        return value - 0x10000
    return value


def _scaled(raw, sf):
    # Dividing for negative exponents keeps 2301 × 10^-1 at 230.1 instead of 230.10000000000002.
    return raw * 10 ** sf if sf >= 0 else raw / 10 ** -sf


def decode_inverter(regs):
    """{field name: value} from a 101/102/103 model's 50 registers (after ID and L).

    Points the device marks as not implemented, or whose scale factor is not implemented, are left
    out rather than reported as numbers.
    """
    sfs = {}
    for p in INVERTER_POINTS:
        if p.type == "sunssf" and regs[p.offset] != _NOT_IMPLEMENTED["sunssf"]:
            sfs[p.point] = _raw(regs, p)
    values = {}
    for p in INVERTER_POINTS:
        if p.name is None:
            continue
        if _unsigned(regs, p) == _NOT_IMPLEMENTED[p.type]:
            continue
        if p.sf is None:
            values[p.name] = float(_raw(regs, p))
        elif p.sf in sfs:
            values[p.name] = _scaled(_raw(regs, p), sfs[p.sf]) * p.scale
    return values


def decode_string(regs):
    return b"".join(struct.pack(">H", r) for r in regs).split(b"\0", 1)[0].decode("ascii", "replace").strip()


def decode_common(regs):
    """Identity strings from the common model's registers (after ID and L)."""
    return {name: decode_string(regs[off:off + n]) for name, off, n in COMMON_STRINGS}

