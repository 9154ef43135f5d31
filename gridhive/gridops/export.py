"""What the community tells its grid operator, per congestion point and 15-min period (pure).

- net schedules: the members' planned net exchange, from their orders (an offer plans an export,
  a bid an import; the forecasts become the orders);
- metering: the members' metered net energy;
- flexibility offers: how much consumption flexible loads (relays) can shed, and at what price.

Privacy: the operator sees sums per congestion point only. A sum over fewer than
`min_households` households is withheld (it would be one household's own series), and a
household's own series is exported only while it has consented (`ConsentRegistry`).

Signs: gridhive counts energy export-positive (`net_export_wh`); UFTP and OpenADR count
consumption-positive, and their adapters convert.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Mapping, NamedTuple

from gridhive.market import Community, Order, Side, div_half_even
from gridhive.market.model import HOUR_MS

from .consent import ConsentRegistry

PERIOD_MS = 900_000
MIN_HOUSEHOLDS = 2


def congestion_points(community: Community,
                      point_of_feeder: Mapping[str, str] | None = None) -> dict[str, str]:
    """Each member's congestion point: by default its feeder, or as the DSO maps feeders."""
    point_of_feeder = point_of_feeder or {}
    return {m.member_id: point_of_feeder.get(m.feeder_id, m.feeder_id) for m in community.members}


def planned_export_wh(orders: Iterable[Order]) -> dict[str, int]:
    """Members' planned net export in an interval, from their orders."""
    plan: dict[str, int] = defaultdict(int)
    for order in orders:
        plan[order.member_id] += order.energy_wh if order.side == Side.OFFER else -order.energy_wh
    return dict(plan)


def average_power_w(energy_wh: int, period_ms: int) -> int:
    return div_half_even(energy_wh * HOUR_MS, period_ms)


class PointRow(NamedTuple):
    """One congestion point in one period; `net_export_wh` is None when withheld for privacy."""

    congestion_point: str
    period_start_ms: int
    period_ms: int
    households: int
    net_export_wh: int | None

    @property
    def net_export_w(self) -> int | None:
        return None if self.net_export_wh is None else average_power_w(self.net_export_wh,
                                                                       self.period_ms)


class HouseholdRow(NamedTuple):
    member_id: str
    congestion_point: str
    period_start_ms: int
    period_ms: int
    net_export_wh: int


class FlexCapacity(NamedTuple):
    """A member's sheddable consumption in one period (flexible loads behind its relays)."""

    member_id: str
    period_start_ms: int
    shed_w: int
    price_minor_per_kwh: int  # the least the household accepts per kWh not consumed


class FlexOfferRow(NamedTuple):
    congestion_point: str
    period_start_ms: int
    period_ms: int
    households: int
    shed_w: int | None
    price_minor_per_kwh: int | None  # the highest ask inside, so every household gets its ask


def per_point(series: Iterable[tuple[int, Mapping[str, int]]], points: Mapping[str, str],
              period_ms: int = PERIOD_MS, min_households: int = MIN_HOUSEHOLDS) -> list[PointRow]:
    """Sum members' per-period values (e.g. Wh) per congestion point, sorted by (period, point)."""
    sums: dict[tuple[int, str], list[int]] = {}
    for period_start_ms, values in series:
        for member_id, value in values.items():
            slot = sums.setdefault((period_start_ms, points[member_id]), [0, 0])
            slot[0] += 1
            slot[1] += value
    return [PointRow(point, start, period_ms, count, total if count >= min_households else None)
            for (start, point), (count, total) in sorted(sums.items())]


def household_series(series: Iterable[tuple[int, Mapping[str, int]]], points: Mapping[str, str],
                     consents: ConsentRegistry, recipient: str, purpose: str,
                     period_ms: int = PERIOD_MS) -> list[HouseholdRow]:
    """Members' own values, only for periods in which they had consented to `recipient`."""
    return sorted(HouseholdRow(member_id, points[member_id], start, period_ms, value)
                  for start, values in series for member_id, value in values.items()
                  if consents.allows(member_id, recipient, purpose, start))


def flex_offers(capacities: Iterable[FlexCapacity], points: Mapping[str, str],
                period_ms: int = PERIOD_MS,
                min_households: int = MIN_HOUSEHOLDS) -> list[FlexOfferRow]:
    groups: dict[tuple[int, str], list[FlexCapacity]] = defaultdict(list)
    for capacity in capacities:
        if capacity.shed_w > 0:
            groups[capacity.period_start_ms, points[capacity.member_id]].append(capacity)
    rows = []
    for (start, point), members in sorted(groups.items()):
        shown = len(members) >= min_households
        rows.append(FlexOfferRow(point, start, period_ms, len(members),
                                 sum(c.shed_w for c in members) if shown else None,
                                 max(c.price_minor_per_kwh for c in members) if shown else None))
    return rows


@dataclass(frozen=True)
class GridExport:
    """Everything for the operator over some periods, already filtered for privacy."""

    recipient: str
    schedules: tuple[PointRow, ...]
    metering: tuple[PointRow, ...]
    flex_offers: tuple[FlexOfferRow, ...]
    household_metering: tuple[HouseholdRow, ...]  # consented households only


def build_export(recipient: str, community: Community,
                 planned: Iterable[tuple[int, Mapping[str, int]]],
                 metered: Iterable[tuple[int, Mapping[str, int]]],
                 capacities: Iterable[FlexCapacity], consents: ConsentRegistry,
                 point_of_feeder: Mapping[str, str] | None = None, period_ms: int = PERIOD_MS,
                 min_households: int = MIN_HOUSEHOLDS) -> GridExport:
    points = congestion_points(community, point_of_feeder)
    metered = list(metered)
    return GridExport(
        recipient,
        tuple(per_point(planned, points, period_ms, min_households)),
        tuple(per_point(metered, points, period_ms, min_households)),
        tuple(flex_offers(capacities, points, period_ms, min_households)),
        tuple(household_series(metered, points, consents, recipient, "metering", period_ms)))
