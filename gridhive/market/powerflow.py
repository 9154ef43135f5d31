"""Network-aware clearing with a real AC power flow: a `NetworkCheck` on a pandapower feeder.

Each member sits at a bus of a low-voltage feeder (by default one of pandapower's bundled Kerber
reference feeders). A trade of E Wh in an interval of T ms schedules its seller to inject, and its
buyer to draw, the average power E * 3,600,000 / T W; the feeder's own loads stay as the DSO's
background. A set of trades is *within limits* when the power flow converges, every bus voltage
is within +-10 % of nominal (EN 50160) and every line and transformer is loaded at most 100 %.

Curtailment rule (deterministic, like `ConnectionLimits`): trades are admitted in matching order
(requests, then merit order), each at the largest volume that keeps all trades admitted so far
within limits. That volume is found by bisection down to 1/64 of the trade (at least 1 Wh), so a
curtailed trade may lose up to 1.6 % more than strictly needed. If the feeder is outside its
limits with no trades at all, nothing is admitted: trades cannot be shown to be safe.

The power flow is floating point, so validators should take the admitted volumes from the ledger
rather than re-derive them (docs/MARKET.md).
"""
from __future__ import annotations

import copy
from typing import Mapping, Sequence

import pandapower as pp
import pandapower.networks as pn

from .model import HOUR_MS, ConfigError, Trade

KERBER_FEEDERS = {
    "landnetz_freileitung_1": pn.create_kerber_landnetz_freileitung_1,
    "landnetz_freileitung_2": pn.create_kerber_landnetz_freileitung_2,
    "landnetz_kabel_1": pn.create_kerber_landnetz_kabel_1,
    "landnetz_kabel_2": pn.create_kerber_landnetz_kabel_2,
    "dorfnetz": pn.create_kerber_dorfnetz,
    "vorstadtnetz_kabel_1": pn.create_kerber_vorstadtnetz_kabel_1,
    "vorstadtnetz_kabel_2": pn.create_kerber_vorstadtnetz_kabel_2,
}
EN50160_BAND_PU = (0.9, 1.1)
CURTAILMENT_PARTS = 64  # bisection resolution: 1/64 of a trade


def kerber_feeder(name: str = "landnetz_freileitung_1"):
    """A fresh pandapower net of one of the Kerber low-voltage reference feeders."""
    if name not in KERBER_FEEDERS:
        raise ConfigError("feeder", f"must be one of {sorted(KERBER_FEEDERS)}", "power flow")
    return KERBER_FEEDERS[name]()


def household_buses(net) -> list[int]:
    """The buses that carry the feeder's household loads, in load order (the connection points)."""
    return [int(bus) for bus in net.load.bus]


def assign_buses(member_ids, net) -> dict[str, int]:
    """Members, sorted by id, onto the household buses in turn (round robin when there are more)."""
    buses = household_buses(net)
    return {member_id: buses[i % len(buses)] for i, member_id in enumerate(sorted(member_ids))}


class PowerFlowCheck:
    """A `NetworkCheck` that curtails trades violating EN 50160 voltage or thermal limits."""

    def __init__(self, net, bus_of: Mapping[str, int], interval_ms: int = 900_000,
                 band_pu: tuple[float, float] = EN50160_BAND_PU, max_loading_percent: float = 100.0):
        unknown = {bus for bus in bus_of.values() if bus not in net.bus.index}
        if unknown:
            raise ConfigError("bus_of", f"buses {sorted(unknown)} are not in the feeder",
                              "power flow")
        self._net = copy.deepcopy(net)  # we add member loads; the caller's net stays as it was
        self._bus_of = dict(bus_of)
        self._interval_ms = interval_ms
        self._band_pu = band_pu
        self._max_loading_percent = max_loading_percent
        # One extra load per bus with members, holding their scheduled net draw.
        self._load_at = {bus: pp.create_load(self._net, bus, p_mw=0.0, name=f"gridhive@{bus}")
                         for bus in sorted(set(self._bus_of.values()))}

    def admit_wh(self, trades: Sequence[Trade], interval_start_ms: int) -> list[int]:
        for trade in trades:
            for member_id in (trade.buyer_id, trade.seller_id):
                if member_id not in self._bus_of:
                    raise ConfigError("bus_of", f"no bus for member {member_id}", "power flow")
        if self.violations({}):
            return [0] * len(trades)
        if not self.violations(_export_wh(trades)):
            return [t.energy_wh for t in trades]
        admitted: list[int] = []
        export_wh: dict[str, int] = {}
        for trade in trades:
            energy_wh = self._largest_within_limits(export_wh, trade)
            admitted.append(energy_wh)
            _add(export_wh, trade, energy_wh)
        return admitted

    def _largest_within_limits(self, export_wh: dict[str, int], trade: Trade) -> int:
        def fits(energy_wh: int) -> bool:
            trial = dict(export_wh)
            _add(trial, trade, energy_wh)
            return not self.violations(trial)

        if fits(trade.energy_wh):
            return trade.energy_wh
        low, high = 0, trade.energy_wh  # low fits (the state so far), high does not
        step_wh = max(1, trade.energy_wh // CURTAILMENT_PARTS)
        while high - low > step_wh:
            mid = (low + high) // 2
            if fits(mid):
                low = mid
            else:
                high = mid
        return low

    def violations(self, export_wh: Mapping[str, int]) -> list[str]:
        """Run the power flow for members' scheduled net exports (Wh in the interval); name every
        limit it breaks (empty when within limits)."""
        net = self._net
        draw_w = dict.fromkeys(self._load_at, 0.0)
        for member_id, energy_wh in export_wh.items():
            draw_w[self._bus_of[member_id]] -= energy_wh * HOUR_MS / self._interval_ms
        for bus, load in self._load_at.items():
            net.load.at[load, "p_mw"] = draw_w[bus] / 1e6
        try:
            pp.runpp(net, numba=False)  # default init: independent of earlier runs
        except pp.LoadflowNotConverged:
            return ["power flow does not converge"]
        low, high = self._band_pu
        found = [f"bus {bus}: {vm:.3f} pu outside {low}-{high}"
                 for bus, vm in net.res_bus.vm_pu.items() if not low <= vm <= high]
        for kind, table in (("line", net.res_line), ("trafo", net.res_trafo)):
            found += [f"{kind} {index}: {loading:.1f} % > {self._max_loading_percent}"
                      for index, loading in table.loading_percent.items()
                      if loading > self._max_loading_percent]
        return found


def _add(export_wh: dict[str, int], trade: Trade, energy_wh: int) -> None:
    export_wh[trade.seller_id] = export_wh.get(trade.seller_id, 0) + energy_wh
    export_wh[trade.buyer_id] = export_wh.get(trade.buyer_id, 0) - energy_wh


def _export_wh(trades: Sequence[Trade]) -> dict[str, int]:
    export_wh: dict[str, int] = {}
    for trade in trades:
        _add(export_wh, trade, trade.energy_wh)
    return export_wh
