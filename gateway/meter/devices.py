"""What to read from each kind of device and how to turn the registers into named values.

A driver has `quantities` ({field: LIMITS key}), `identity`, `reads` ([(table, address, count)], None
until discovered), `async discover(read)` and a pure `decode(results)` for the registers of `reads`.
`read(table, address, count)` is the poller's retrying read.
"""
from __future__ import annotations

from .link import LinkError
from .registers import (COMMON_MODEL_ID, EASTRON_MAPS, END_MODEL_ID, HOLDING, INVERTER_MODEL_IDS,
                        INVERTER_MODEL_LEN, INVERTER_POINTS, SUNS_MARKER, SUNSPEC_BASES, decode_common,
                        decode_eastron, decode_inverter, plan_reads)

COMMON_MODEL_MIN_LEN = 65  # 65 in the original specification, 66 (with a pad register) later


class EastronDriver:
    def __init__(self, dmap):
        self.dmap = dmap
        self.quantities = {f.name: f.quantity for f in dmap.fields}
        self.identity = {"manufacturer": "Eastron", "model": dmap.model}
        spans = [(f.address, 2) for f in dmap.fields]
        self.reads = [(dmap.table, start, count)
                      for start, count in plan_reads(spans, max_gap_regs=dmap.max_gap_regs)]

    async def discover(self, read):
        """Nothing to discover: the register map is fixed."""

    def decode(self, results):
        regs = {}
        for (_table, start, count), values in zip(self.reads, results):
            regs.update(zip(range(start, start + count), values))
        return decode_eastron(self.dmap, regs)


class SunSpecDriver:
    """A SunSpec device: finds the "SunS" marker, walks the model list, polls the inverter model."""

    def __init__(self, max_models=32):
        self.max_models = max_models
        self.quantities = {p.name: p.quantity for p in INVERTER_POINTS if p.name and p.quantity}
        self.identity = {}
        self.reads = None

    async def discover(self, read):
        base = None
        for candidate in SUNSPEC_BASES:
            try:
                marker = await read(HOLDING, candidate, 2)
            except LinkError as e:
                if e.transient:  # a busy or silent device says nothing about where its map is
                    raise
                continue
            if tuple(marker) == SUNS_MARKER:
                base = candidate
                break
        if base is None:
            raise LinkError("not_sunspec", "no SunS marker at " + "/".join(map(str, SUNSPEC_BASES)),
                            transient=False)
        models, address = {}, base + 2  # model id -> (address of its first data register, length)
        for _ in range(self.max_models):
            model_id, length = await read(HOLDING, address, 2)
            if model_id == END_MODEL_ID:
                break
            models.setdefault(model_id, (address + 2, length))
            address += 2 + length
        inverter = next((m for m in INVERTER_MODEL_IDS if m in models), None)
        if inverter is None or models[inverter][1] < INVERTER_MODEL_LEN:
            raise LinkError("no_inverter_model", f"models {sorted(models)}", transient=False)
        identity = {"sunspec_base": base, "inverter_model": inverter}
        if COMMON_MODEL_ID in models and models[COMMON_MODEL_ID][1] >= COMMON_MODEL_MIN_LEN:
            identity.update(decode_common(await read(HOLDING, models[COMMON_MODEL_ID][0], COMMON_MODEL_MIN_LEN)))
        self.identity = identity
        self.reads = [(HOLDING, models[inverter][0], INVERTER_MODEL_LEN)]

    def decode(self, results):
        return decode_inverter(results[0])


def driver_for(kind):
    """A driver by configuration name: sdm120, sdm630 or sunspec."""
    if kind == "sunspec":
        return SunSpecDriver()
    dmap = EASTRON_MAPS.get(kind.upper())
    if dmap is None:
        raise ValueError(f"unknown meter kind {kind!r}: choose sdm120, sdm630 or sunspec")
    return EastronDriver(dmap)
