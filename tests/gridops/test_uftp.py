"""The community's UFTP aggregator against the library's own DSO service, on loopback."""
import socket
import time
from base64 import b64encode
from datetime import date, datetime, timedelta, timezone

import pytest

pytest.importorskip("shapeshifter_uftp")
from nacl.bindings import crypto_sign_keypair  # noqa: E402
from shapeshifter_uftp import (AcceptedRejected, DPrognosis, FlexOffer, FlexOrder,  # noqa: E402
                               FlexOrderISP, FlexOrderResponse, FlexRequest, Metering,
                               ShapeshifterDsoService)
from shapeshifter_uftp.uftp import AvailableRequested, FlexRequestISP  # noqa: E402
from xsdata.models.datatype import XmlDate, XmlDuration  # noqa: E402

from gridhive.gridops.export import FlexOfferRow, PointRow  # noqa: E402
from gridhive.gridops.uftp import CommunityAggregator, d_prognosis, isp_of, metering  # noqa: E402

TZ = "Europe/Amsterdam"
DAY = date(2026, 6, 1)
MIDNIGHT_MS = int(datetime(2026, 5, 31, 22, tzinfo=timezone.utc).timestamp() * 1000)  # 00:00 CEST
CP = "ean.871685900012345678"
AGR, DSO = "lec.gridhive.example", "dso.grid.example"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keypair():
    public, private = crypto_sign_keypair()
    return b64encode(private).decode(), b64encode(public).decode()


class Dso(ShapeshifterDsoService):
    """The library's DSO service, recording what arrives."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.received = []

    def _record(self, message):
        self.received.append(message)

    process_d_prognosis = process_flex_offer = process_flex_order_response = _record
    process_flex_request_response = process_metering = process_flex_offer_revocation = _record
    process_flex_reservation_update_response = process_flex_settlement_response = _record
    process_dso_portfolio_query_response = process_dso_portfolio_update_response = _record

    def wait_for(self, kind, count=1, timeout_s=20):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [m for m in self.received if isinstance(m, kind)]
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise TimeoutError(f"no {kind.__name__} arrived; got {self.received}")


@pytest.fixture(scope="module")
def peers():
    (agr_private, agr_public), (dso_private, dso_public) = keypair(), keypair()
    ports = {AGR: free_port(), DSO: free_port()}
    keys = {AGR: agr_public, DSO: dso_public}

    def endpoint(domain, role):
        return f"http://127.0.0.1:{ports[domain]}/shapeshifter/api/v3/message"

    def key(domain, role):
        return keys[domain]

    flex = [FlexOfferRow(CP, MIDNIGHT_MS + 72 * 900_000, 900_000, 3, 12_000, 20),  # 18:00
            FlexOfferRow(CP, MIDNIGHT_MS + 73 * 900_000, 900_000, 3, 8_000, 25)]
    orders = []

    def on_flex_order(order):
        orders.append(order)
        return True

    agr = CommunityAggregator(AGR, agr_private, DSO, flex_rows=lambda: flex,
                              on_flex_order=on_flex_order, key_lookup_function=key,
                              endpoint_lookup_function=endpoint, host="127.0.0.1",
                              port=ports[AGR])
    dso = Dso(DSO, dso_private, key_lookup_function=key, endpoint_lookup_function=endpoint,
              host="127.0.0.1", port=ports[DSO])
    agr.run_in_thread()
    dso.run_in_thread()
    yield agr, dso, orders
    agr.stop()
    dso.stop()


def test_isps_count_from_local_midnight():
    assert isp_of(MIDNIGHT_MS, DAY, TZ) == 1
    assert isp_of(MIDNIGHT_MS + 72 * 900_000, DAY, TZ) == 73
    spring = date(2026, 3, 29)  # clocks go forward: 92 ISPs
    schedule = d_prognosis([], CP, spring, TZ)
    assert len(schedule.isps) == 92


def test_d_prognosis_and_metering_reach_the_dso(peers):
    agr, dso, _ = peers
    rows = [PointRow(CP, MIDNIGHT_MS + 900_000 * k, 900_000, 5, wh)
            for k, wh in ((0, -1_500), (1, 250), (2, None))]
    agr.send_d_prognosis(d_prognosis(rows, CP, DAY, TZ))
    (prognosis,) = dso.wait_for(DPrognosis)
    assert prognosis.sender_domain == AGR and prognosis.congestion_point == CP
    assert len(prognosis.isps) == 96
    # Export-positive Wh per 15 min -> consumption-positive W; a withheld row is sent as 0.
    assert [(i.start, i.power) for i in prognosis.isps[:3]] == [(1, 6_000), (2, -1_000), (3, 0)]

    agr.send_metering(metering(rows, CP, DAY, TZ, ean="871685900000000001"))
    (metered,) = dso.wait_for(Metering)
    assert [(i.start, float(i.value)) for i in metered.profiles[0].isps] == [(1, 6.0), (2, -1.0)]


def test_flex_request_offer_and_order(peers):
    agr, dso, orders = peers
    request = FlexRequest(
        isp_duration=XmlDuration("PT15M"), time_zone=TZ, period=XmlDate(2026, 6, 1),
        congestion_point=CP, revision=1,
        expiration_date_time=(datetime.now(timezone.utc) + timedelta(hours=1)).isoformat(),
        isps=[FlexRequestISP(disposition=AvailableRequested.REQUESTED, min_power=-10_000,
                             max_power=0, start=73, duration=2)])
    with dso.agr_client(AGR) as client:
        client.send_flex_request(request)
    (offer,) = dso.wait_for(FlexOffer)
    option = offer.offer_options[0]
    # ISP 73 capped at the 10 kW asked for; ISP 74 offers its whole 8 kW.
    assert [(i.start, i.power) for i in option.isps] == [(73, -10_000), (74, -8_000)]
    # 2,500 Wh x 20 c/kWh + 2,000 Wh x 25 c/kWh = 100 c.
    assert option.price == 1
    assert offer.flex_request_message_id == request.message_id

    def order(isps, reference=option.option_reference):
        return FlexOrder(isp_duration=offer.isp_duration, time_zone=TZ, period=offer.period,
                         congestion_point=CP, isps=isps, flex_offer_message_id=offer.message_id,
                         price=option.price, currency="EUR", order_reference="PO-1",
                         option_reference=reference, activation_factor=1)

    same = [FlexOrderISP(power=i.power, start=i.start, duration=i.duration) for i in option.isps]
    with dso.agr_client(AGR) as client:
        client.send_flex_order(order(same))
        client.send_flex_order(order(same[:1]))
    responses = dso.wait_for(FlexOrderResponse, count=2)
    results = sorted((r.result, r.rejection_reason or "") for r in responses)
    assert results == [(AcceptedRejected.ACCEPTED, ""),
                       (AcceptedRejected.REJECTED, "ISPs differ from the FlexOffer")]
    assert len(orders) == 1 and orders[0].order_reference == "PO-1"
