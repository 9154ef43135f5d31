"""Network-aware clearing: DSO limits that curtail trades before they are accepted.

Curtailment rule (deterministic): trades are admitted in the order the mechanism matched them
(energy requests first, then merit order, or the mean-bid rule's FIFO order), each cut to the
smallest remaining headroom on its path. Curtailment therefore falls on the last-matched, least
valuable trades first. Curtailed energy is not re-matched with other counterparties; it stays with
the utility.
"""
from __future__ import annotations

from typing import Protocol, Sequence

from .model import Community, MarketConfig, Trade


class NetworkCheck(Protocol):
    """A check the DSO's network imposes on one interval's proposed trades.

    Returns the admitted energy per trade, in the given order, each within 0..trade.energy_wh.
    Must be a deterministic function of its inputs (validators re-run it). The power-flow check
    (pandapower, EN 50160 voltage band, line loading) is meant to plug in here.
    """

    def admit_wh(self, trades: Sequence[Trade], interval_start_ms: int) -> list[int]: ...


class ConnectionLimits:
    """Import/export limits per connection point (member) and per feeder, held over the interval.

    A trade inside one feeder uses its buyer's import and its seller's export headroom. A trade
    across feeders also uses the seller feeder's export and the buyer feeder's import headroom,
    counted gross (opposite flows are not netted), which can only be stricter than the physics.
    """

    def __init__(self, config: MarketConfig, community: Community):
        limit_wh = config.limit_wh
        self._community = community
        limited = community.limited_members
        self._member_import_wh = {m.member_id: limit_wh(m.max_import_w)
                                  for m in limited if m.max_import_w is not None}
        self._member_export_wh = {m.member_id: limit_wh(m.max_export_w)
                                  for m in limited if m.max_export_w is not None}
        self._feeder_import_wh = {f.feeder_id: limit_wh(f.max_import_w)
                                  for f in community.feeders if f.max_import_w is not None}
        self._feeder_export_wh = {f.feeder_id: limit_wh(f.max_export_w)
                                  for f in community.feeders if f.max_export_w is not None}

    @property
    def any_limit(self) -> bool:
        return bool(self._member_import_wh or self._member_export_wh or self._feeder_import_wh
                    or self._feeder_export_wh)

    def admit_wh(self, trades: Sequence[Trade], interval_start_ms: int) -> list[int]:
        members = self._community.by_id
        member_import, member_export = dict(self._member_import_wh), dict(self._member_export_wh)
        feeder_import, feeder_export = dict(self._feeder_import_wh), dict(self._feeder_export_wh)
        admitted = []
        for trade in trades:
            buyer, seller = trade.buyer_id, trade.seller_id
            slots = []
            if buyer in member_import:
                slots.append((member_import, buyer))
            if seller in member_export:
                slots.append((member_export, seller))
            if feeder_import or feeder_export:
                buyer_feeder, seller_feeder = members[buyer].feeder_id, members[seller].feeder_id
                if buyer_feeder != seller_feeder:
                    if buyer_feeder in feeder_import:
                        slots.append((feeder_import, buyer_feeder))
                    if seller_feeder in feeder_export:
                        slots.append((feeder_export, seller_feeder))
            energy_wh = trade.energy_wh
            for table, key in slots:
                energy_wh = min(energy_wh, table[key])
            for table, key in slots:
                table[key] -= energy_wh
            admitted.append(energy_wh)
        return admitted
