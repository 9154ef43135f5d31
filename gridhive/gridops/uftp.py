"""USEF/UFTP (Shapeshifter) for the community acting as aggregator (AGR) towards its DSO.

- D-Prognosis: the net schedule of one congestion point for one day, per 15-min ISP;
- FlexRequest -> FlexRequestResponse, then a FlexOffer built from the community's flexibility
  (an injected callable, e.g. from `export.flex_offers`);
- FlexOrder -> accepted only if its ISPs are exactly those of an offer we made and the injected
  callback (which schedules the relays) agrees; else rejected with the reason;
- Metering: the congestion point's metered net power per ISP.

UFTP counts power consumption-positive in W; gridhive's rows are export-positive, so powers are
negated here. ISPs are numbered from 1 at local midnight of `time_zone` (92 or 100 of them on
daylight-saving days). Prices: minor units per kWh become major units (/100) per the message.
"""
from __future__ import annotations

import logging
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Callable, Iterable, Sequence
from zoneinfo import ZoneInfo

from shapeshifter_uftp import (AcceptedRejected, DPrognosis, DPrognosisISP, FlexOffer,
                               FlexOfferOption, FlexOfferOptionISP, FlexOrder, FlexOrderResponse,
                               FlexRequest, FlexRequestResponse, Metering, MeteringISP,
                               MeteringProfile, ShapeshifterAgrService)
from shapeshifter_uftp.uftp import MeteringProfileEnum, MeteringUnit
from xsdata.models.datatype import XmlDate, XmlDuration

from .export import FlexOfferRow, PointRow

log = logging.getLogger(__name__)
ISP_MS = 900_000
MINOR_PER_MAJOR = 100


def isp_of(ts_ms: int, day: date, time_zone: str) -> int:
    """The 1-based ISP number of `ts_ms` within local `day`."""
    midnight = datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(time_zone))
    return (ts_ms - int(midnight.timestamp() * 1000)) // ISP_MS + 1


def local_day(ts_ms: int, time_zone: str) -> date:
    return datetime.fromtimestamp(ts_ms / 1000, ZoneInfo(time_zone)).date()


def d_prognosis(rows: Iterable[PointRow], congestion_point: str, day: date, time_zone: str,
                revision: int = 1) -> DPrognosis:
    """One congestion point's schedule for a local day. Withheld rows (too few households) and
    other points or days are skipped; ISPs without a row are sent as 0 W."""
    power_w = {isp_of(r.period_start_ms, day, time_zone): -r.net_export_w for r in rows
               if r.congestion_point == congestion_point and r.net_export_wh is not None
               and local_day(r.period_start_ms, time_zone) == day}
    isps = _isps_of_day(day, time_zone)
    return DPrognosis(isp_duration=XmlDuration("PT15M"), time_zone=time_zone,
                      period=XmlDate(day.year, day.month, day.day),
                      congestion_point=congestion_point, revision=revision,
                      isps=[DPrognosisISP(power=power_w.get(i, 0), start=i, duration=1)
                            for i in isps])


def metering(rows: Iterable[PointRow], congestion_point: str, day: date, time_zone: str,
             ean: str, revision: int = 1) -> Metering:
    """Metered average power per ISP (kW, consumption-positive) of one congestion point."""
    values = {isp_of(r.period_start_ms, day, time_zone): Decimal(-r.net_export_w) / 1000
              for r in rows
              if r.congestion_point == congestion_point and r.net_export_wh is not None
              and local_day(r.period_start_ms, time_zone) == day}
    profile = MeteringProfile(profile_type=MeteringProfileEnum.POWER, unit=MeteringUnit.K_W,
                              isps=[MeteringISP(start=i, value=v) for i, v in sorted(values.items())])
    return Metering(profiles=[profile], revision=revision, isp_duration=XmlDuration("PT15M"),
                    time_zone=time_zone, period=XmlDate(day.year, day.month, day.day), ean=ean)


def offer_option(request: FlexRequest, rows: Sequence[FlexOfferRow],
                 reference: str) -> FlexOfferOption | None:
    """One option covering the requested ISPs the community can shed in; None if none.

    Each ISP offers the congestion point's whole sheddable power (capped at what was asked for
    when the DSO gave a bound); the price is what the households ask for that energy."""
    day = date(request.period.year, request.period.month, request.period.day)
    shed = {isp_of(r.period_start_ms, day, request.time_zone): r for r in rows
            if r.congestion_point == request.congestion_point and r.shed_w}
    isps, price_milli_minor = [], 0
    for wanted in request.isps:
        for isp in range(wanted.start, wanted.start + (wanted.duration or 1)):
            row = shed.get(isp)
            if row is None:
                continue
            asked_w = -wanted.min_power if wanted.min_power < 0 else row.shed_w
            power_w = min(row.shed_w, asked_w)
            if power_w <= 0:
                continue
            isps.append(FlexOfferOptionISP(power=-power_w, start=isp, duration=1))
            # W x ISP (1/4 h) = Wh/4; Wh x minor/kWh = milli-minor.
            price_milli_minor += power_w * ISP_MS // 3_600_000 * row.price_minor_per_kwh
    if not isps:
        return None
    return FlexOfferOption(isps=isps, option_reference=reference,
                           price=Decimal(price_milli_minor) / (1000 * MINOR_PER_MAJOR),
                           min_activation_factor=Decimal("1.00"))


class CommunityAggregator(ShapeshifterAgrService):
    """The community's UFTP endpoint (AGR role); run with `run_in_thread()` / `stop()`.

    `flex_rows()` gives the current flexibility rows; `on_flex_order(order)` schedules the
    ordered shedding and returns whether it can be done.
    """

    def __init__(self, sender_domain: str, signing_key: str, dso_domain: str,
                 flex_rows: Callable[[], Sequence[FlexOfferRow]],
                 on_flex_order: Callable[[FlexOrder], bool], currency: str = "EUR",
                 offer_validity: timedelta = timedelta(hours=1), **service_options):
        super().__init__(sender_domain, signing_key, **service_options)
        self.dso_domain = dso_domain
        self.currency = currency
        self._flex_rows = flex_rows
        self._on_flex_order = on_flex_order
        self._offer_validity = offer_validity
        self.offers: dict[str, FlexOffer] = {}  # by message id, to check FlexOrders against
        self.responses: list = []               # the DSO's responses, for the operator's log

    def send_d_prognosis(self, message: DPrognosis) -> None:
        with self.dso_client(self.dso_domain) as client:
            client.send_d_prognosis(message)

    def send_metering(self, message: Metering) -> None:
        with self.dso_client(self.dso_domain) as client:
            client.send_metering(message)

    def process_flex_request(self, message: FlexRequest):
        option = offer_option(message, self._flex_rows(), f"{message.message_id}-1")
        with self.dso_client(message.sender_domain) as client:
            client.send_flex_request_response(FlexRequestResponse(
                conversation_id=message.conversation_id, result=AcceptedRejected.ACCEPTED,
                flex_request_message_id=message.message_id))
            if option is None:
                return
            expires = datetime.now(ZoneInfo("UTC")) + self._offer_validity
            offer = FlexOffer(isp_duration=message.isp_duration, time_zone=message.time_zone,
                              period=message.period, congestion_point=message.congestion_point,
                              offer_options=[option], expiration_date_time=expires.isoformat(),
                              flex_request_message_id=message.message_id,
                              currency=self.currency, conversation_id=message.conversation_id)
            client.send_flex_offer(offer)
            self.offers[offer.message_id] = offer

    def process_flex_order(self, message: FlexOrder):
        reason = self._order_problem(message)
        if reason is None and not self._on_flex_order(message):
            reason = "the community cannot deliver this order now"
        with self.dso_client(message.sender_domain) as client:
            client.send_flex_order_response(FlexOrderResponse(
                conversation_id=message.conversation_id, flex_order_message_id=message.message_id,
                result=AcceptedRejected.ACCEPTED if reason is None else AcceptedRejected.REJECTED,
                rejection_reason=reason))

    def _order_problem(self, order: FlexOrder) -> str | None:
        offer = self.offers.get(order.flex_offer_message_id)
        if offer is None:
            return "unknown FlexOffer"
        option = next((o for o in offer.offer_options
                       if o.option_reference == order.option_reference), None)
        if option is None:
            return "unknown option reference"
        if [(i.power, i.start, i.duration) for i in order.isps] != [
                (i.power, i.start, i.duration) for i in option.isps]:
            return "ISPs differ from the FlexOffer"
        return None

    def _record(self, message) -> None:
        log.info("UFTP %s from %s: %s", type(message).__name__, message.sender_domain,
                 getattr(message, "result", ""))
        self.responses.append(message)

    # The DSO's answers and the messages this community does not act on are recorded only.
    process_d_prognosis_response = _record
    process_flex_offer_response = _record
    process_flex_offer_revocation_response = _record
    process_flex_reservation_update = _record
    process_flex_settlement = _record
    process_metering_response = _record
    process_agr_portfolio_query_response = _record
    process_agr_portfolio_update_response = _record


def _isps_of_day(day: date, time_zone: str) -> list[int]:
    next_day = day + timedelta(days=1)
    end_ms = int(datetime(next_day.year, next_day.month, next_day.day,
                          tzinfo=ZoneInfo(time_zone)).timestamp() * 1000)
    return list(range(1, isp_of(end_ms, day, time_zone)))
