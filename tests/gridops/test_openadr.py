"""The community VEN against a real openleadr VTN (OpenADRServer) on loopback."""
import asyncio
import socket
from datetime import datetime, timedelta, timezone

import pytest

pytest.importorskip("openleadr")
from openleadr import OpenADRServer  # noqa: E402

from gridhive.gridops.openadr import CommunityVen, DrKind, actions_from_event  # noqa: E402

# openleadr 0.5 stores its server on the aiohttp app with a plain string key.
pytestmark = pytest.mark.filterwarnings("ignore:It is recommended to use web.AppKey")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_for(predicate, timeout_s=15.0):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.1)


def test_ven_registers_reports_net_load_and_acts_on_events():
    async def scenario():
        port = free_port()
        vtn_got = {"registered": [], "reports": [], "opts": {}}

        async def on_create_party_registration(info):
            vtn_got["registered"].append(info["ven_name"])
            return "ven-lec-1", "reg-1"

        async def on_register_report(ven_id, resource_id, measurement, unit, scale,
                                     min_sampling_interval, max_sampling_interval):
            async def on_data(data):
                vtn_got["reports"].extend((resource_id, measurement, value) for _, value in data)
            return on_data, min_sampling_interval

        vtn = OpenADRServer(vtn_id="dso-vtn", http_port=port, http_host="127.0.0.1",
                            requested_poll_freq=timedelta(seconds=1))
        vtn.add_handler("on_create_party_registration", on_create_party_registration)
        vtn.add_handler("on_register_report", on_register_report)
        await vtn.run_async()

        acted = []

        def on_actions(actions):
            acted.extend(actions)
            return actions[0].kind != DrKind.SHIFT  # opt out of load dispatch, in of the rest

        ven = CommunityVen(f"http://127.0.0.1:{port}/OpenADR2/Simple/2.0b", "gridhive-lec",
                           net_load_w=lambda: 4_250, on_actions=on_actions,
                           report_interval=timedelta(seconds=1))
        await ven.start()
        try:
            await wait_for(lambda: vtn_got["reports"])
            start = datetime.now(timezone.utc) + timedelta(minutes=5)
            for event_id, name, kind, value in (("ev-simple", "SIMPLE", "level", 2.0),
                                                ("ev-dispatch", "LOAD_DISPATCH", "delta", -3000.0),
                                                ("ev-price", "ENERGY_PRICE", "price", 0.31)):
                vtn.add_event("ven-lec-1", name, kind,
                              [{"dtstart": start, "duration": timedelta(minutes=15),
                                "signal_payload": value}],
                              callback=lambda ven_id, event_id, opt_type:
                              vtn_got["opts"].__setitem__(event_id, opt_type),
                              event_id=event_id)
            await wait_for(lambda: len(vtn_got["opts"]) == 3, timeout_s=30)
        finally:
            await ven.stop()
            await vtn.stop()
        return vtn_got, acted, start

    vtn_got, acted, start = asyncio.run(scenario())
    assert vtn_got["registered"] == ["gridhive-lec"]
    assert ("community", "RealPower", 4250.0) in vtn_got["reports"]
    assert vtn_got["opts"] == {"ev-simple": "optIn", "ev-dispatch": "optOut",
                               "ev-price": "optIn"}
    by_event = {a.event_id: a for a in acted}
    assert by_event["ev-simple"][1:] == (DrKind.SHED, "SIMPLE", "level",
                                         int(start.timestamp() * 1000), 900_000, 2.0)
    assert by_event["ev-dispatch"].kind == DrKind.SHIFT and by_event["ev-dispatch"].value == -3000
    assert by_event["ev-price"].kind == DrKind.PRICE and by_event["ev-price"].value == 0.31


def test_events_without_a_known_signal_give_no_actions():
    t0 = datetime(2026, 6, 1, tzinfo=timezone.utc)
    event = {"event_descriptor": {"event_id": "e"}, "active_period": {"dtstart": t0},
             "event_signals": [{"signal_name": "BID_PRICE", "signal_type": "price",
                                "intervals": [{"duration": timedelta(minutes=15),
                                               "signal_payload": 1.0}]}]}
    assert actions_from_event(event) == []
    event["event_signals"][0].update(signal_name="simple", signal_type="level")
    event["event_signals"][0]["intervals"].append({"duration": timedelta(minutes=15),
                                                   "signal_payload": 3.0})
    actions = actions_from_event(event)
    # Intervals without their own start follow each other from the active period's start.
    assert [(a.start_ms - int(t0.timestamp() * 1000), a.value) for a in actions] == [
        (0, 1.0), (900_000, 3.0)]
