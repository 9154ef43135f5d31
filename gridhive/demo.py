"""`gridhive demo`: a small community on one machine, shown live, then its market day.

Virtual homes run the real node firmware against a broker (Mosquitto when installed, else the
embedded amqtt broker). A real gateway process verifies, stores and acknowledges what they publish
and forwards it to a real controller process, whose database feeds the table: each home's grid
power, voltage, EV charger relay and energy counters, and the gateway's counts. Halfway through,
the demo switches one home's EV charger on through the gateway's HTTP API. At the end it checks
that every message each home produced reached the controller exactly once, and shows the homes'
trading agents on one market day (gridhive.community): LiteRT forecasts, orders, clearing of all
96 intervals, settlement against the day's metering, and each home's cost with and without the market.
"""
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from rich.console import Group
from rich.live import Live
from rich.table import Table

from gridhive.broker import free_port, start_broker, stop_process, wait_for_port
from gridhive.community import DEMO_MARKET, PAPERS_CONSUMERS_PCT, PAPERS_PROSUMERS_PCT, simulate_day
from gridhive.controller.store import open_store
from gridhive.hardware.virtual_node import GRID_CHANNEL, start_virtual_nodes

TELEMETRY_PERIOD_S = 2
REFRESH_S = 0.5
GATEWAY_ID = "gw-1"


def gateway_config(path: Path, homes, broker, http_port: int) -> Path:
    """gateway.toml for the demo: the homes' registry, the local broker, uplink over the same broker."""
    lines = [
        "[gateway]", f'id = "{GATEWAY_ID}"', f'data_dir = "{path.parent}"', 'log_level = "WARNING"',
        "[broker]", f'host = "{broker.host}"', f"port = {broker.port}",
        # amqtt speaks MQTT 3.1.1 only; Mosquitto gets the gateway's MQTT 5 session with manual acks.
        f'mqtt_version = "{"3.1.1" if broker.kind == "embedded" else "5"}"',
        "[http]", f"port = {http_port}",
        "[homeassistant]", "enabled = false",
        "[uplink]", f'host = "{broker.host}"', f"port = {broker.port}", "tls = false", "retry_s = 2",
        "status_interval_s = 5",
    ]
    for home in homes:  # the registry follows each node's own config: its CT channels and relays
        n = home.node_id
        lines += [f"[nodes.{n}]", f'secret_hex = "{home.secret.hex()}"', f'household = "{n}"']
        for i, ch in enumerate(home.config["channels"]):
            if ch.get("kind", "ct") == "ct":
                lines += [f"[[nodes.{n}.channels]]", f"n = {i}", f'name = "{ch["name"]}"',
                          f"rating_a = {ch['rating_a']}", f"grid = {'true' if ch['name'] == GRID_CHANNEL else 'false'}"]
        for i, relay in enumerate(home.config["relays"]):
            lines += [f"[[nodes.{n}.relays]]", f"n = {i}", f'name = "{relay["name"]}"']
    path.write_text("\n".join(lines) + "\n")
    return path


def _get(url: str, body: dict | None = None, timeout_s: float = 10.0) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return json.loads(e.read() or b"{}") | {"status": e.code}


def _homes_table(homes, latest, stored, elapsed_s, duration_s, broker_kind) -> Table:
    table = Table(title=f"gridhive demo — {len(homes)} homes, gateway {GATEWAY_ID}, {broker_kind} broker, "
                        f"{elapsed_s:.0f}/{duration_s:.0f} s")
    for col, justify in (("home", "left"), ("load", "left"), ("grid W", "right"), ("V", "right"),
                         ("EV relay", "center"), ("EV A", "right"), ("in Wh", "right"), ("out Wh", "right"),
                         ("at controller", "right"), ("buffered", "right")):
        table.add_column(col, justify=justify)
    for home in homes:
        tele = latest.get(home.node_id)
        if tele:
            mains, ev = tele["ch"][0], tele["ch"][1]
            relay = tele["relays"][0]
            row = [f"{mains['power_w']:+d}", f"{(tele['vrms_mv'] or 0) / 1000:.1f}",
                   ("[green]on[/]" if relay["on"] else "off") + (f" [red]{relay['trip']}[/]" if relay["trip"] else ""),
                   f"{ev['irms_ma'] / 1000:.1f}", str(mains["energy_in_wh"]), str(mains["energy_out_wh"])]
        else:
            row = ["…"] * 6
        table.add_row(home.node_id, home.load.kind, *row, str(stored.get(home.node_id, 0)),
                      str(home.firmware.buf.depth()))
    return table


def _gateway_table(stats: dict, events: list[str]) -> Table:
    table = Table(title="gateway", caption=" · ".join(events[-3:]) or None)
    for col in ("accepted", "duplicates", "rejected", "stored", "uplink outbox", "uplink"):
        table.add_column(col, justify="right")
    if stats:
        table.add_row(str(stats["accepted_total"]), str(stats["duplicates"]), str(stats["rejected_total"]),
                      str(stats["stored_messages"]), str(stats["outbox_items"]),
                      "[green]up[/]" if stats["uplink_connected"] else "[red]down[/]")
    return table


def run_demo(nodes: int, duration_s: float, broker: str, console) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="gridhive-demo-"))
    console.print(f"starting the broker ({broker}) …")
    mqtt_broker = start_broker(broker, workdir / "broker")
    console.print(f"{mqtt_broker.kind} broker on {mqtt_broker.host}:{mqtt_broker.port}; state in {workdir}")
    homes = start_virtual_nodes(nodes, mqtt_broker.host, mqtt_broker.port, workdir / "nodes", "mixed",
                                period_s=TELEMETRY_PERIOD_S, started=False)
    db_url = f"sqlite:///{workdir / 'controller.sqlite3'}"
    http_port = free_port()
    (workdir / "gateway").mkdir()
    config = gateway_config(workdir / "gateway" / "gateway.toml", homes, mqtt_broker, http_port)
    logs = open(workdir / "services.log", "ab")
    console.print("starting the controller and the gateway …")
    controller = subprocess.Popen([sys.executable, "-m", "gridhive.controller", "serve", "--db", db_url,
                                   "--broker", f"{mqtt_broker.host}:{mqtt_broker.port}", "--log-level", "warning"],
                                  stdout=logs, stderr=logs)
    gateway = subprocess.Popen([sys.executable, "-m", "gridhive.gateway", "run", "--config", str(config)],
                               stdout=logs, stderr=logs)
    api = f"http://127.0.0.1:{http_port}"
    try:
        wait_for_port(http_port, timeout_s=30)
        for home in homes:
            home.start()
        store = open_store(db_url)
        try:
            code = _live(homes, api, store, duration_s, mqtt_broker.kind, console)
            console.print("\nstopping: delivering what the homes still have buffered …")
            for home in homes:
                home.stop_measuring()
            _drain(homes, store, timeout_s=15)
            code = code or _summary(homes, store, console)
        finally:
            store.close()
        console.print(_market_table([h.node_id for h in homes]))
        return code
    except TimeoutError:
        console.print(f"[red]the gateway did not start; see {workdir / 'services.log'}[/]")
        return 1
    finally:
        for home in homes:
            home.stop()
        for proc in (gateway, controller):
            stop_process(proc)
        logs.close()
        mqtt_broker.stop()


def _latest_tele(store) -> tuple[dict, dict]:
    """Each home's newest telemetry and how many of its messages the controller holds."""
    latest = {row["node"]: json.loads(row["payload"]) for row in store.latest("tele")}
    return latest, store.message_counts()


def _live(homes, api, store, duration_s, broker_kind, console) -> int:
    events: list[str] = []
    commanded = False
    t0 = time.monotonic()
    last_print = 0.0
    try:
        with Live(console=console, refresh_per_second=4) as live:
            while (elapsed := time.monotonic() - t0) < duration_s:
                latest, stored = _latest_tele(store)
                stats = _get(f"{api}/api/stats")
                if not commanded and elapsed > duration_s / 2 and "vnode-1" in latest:
                    commanded = True
                    events.append(f"{elapsed:.0f}s: EV charger on at vnode-1 (POST {api}/api/nodes/vnode-1/relays/0)")
                    reply = _get(f"{api}/api/nodes/vnode-1/relays/0", {"action": "on"})
                    events.append("vnode-1: " + (f"relay {reply.get('state')}" if reply.get("ok")
                                                 else f"refused: {reply.get('reason') or reply.get('error')}"))
                live.update(Group(_homes_table(homes, latest, stored, elapsed, duration_s, broker_kind),
                                  _gateway_table(stats, events)))
                if not console.is_terminal and elapsed - last_print >= 10:
                    last_print = elapsed
                    console.print(f"{elapsed:.0f} s: {sum(stored.values())} messages at the controller from "
                                  f"{len(stored)} homes; gateway accepted {stats.get('accepted_total')}")
                time.sleep(REFRESH_S)
    except KeyboardInterrupt:
        pass
    return 0


def _delivered(home, stored: dict) -> bool:
    produced = home.firmware.seqs.peek() - home.firmware.first_seq
    return home.firmware.buf.depth() == 0 and stored.get(home.node_id, 0) >= produced


def _drain(homes, store, timeout_s):
    """Give the last buffered messages time to pass the gateway and reach the controller."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stored = store.message_counts()
        if all(_delivered(h, stored) for h in homes):
            return
        time.sleep(0.2)


def _pct(bp) -> str:
    return "—" if bp is None else f"{bp / 100:+.2f} %"


def _market_table(member_ids) -> Table:
    """The homes' trading agents on one market day: forecast, orders, clearing, settlement."""
    day = simulate_day(member_ids)
    cfg = DEMO_MARKET
    table = Table(title=f"day-ahead market: each home's agent trades one day of a shipped household "
                        f"({cfg.mechanism}, feed-in {cfg.feed_in_minor_per_kwh}, retail "
                        f"{cfg.retail_minor_per_kwh} Rp/kWh)",
                  caption=f"{day.traded_wh / 1000:.1f} kWh traded in {day.intervals_with_trades} of 96 intervals"
                          + (f" at {day.mean_price_minor_per_kwh:.1f} Rp/kWh on average"
                             if day.mean_price_minor_per_kwh else "")
                          + f"; cost reduction: prosumers {_pct(day.prosumers_bp)} (papers "
                          f"{PAPERS_PROSUMERS_PCT[0]:.2f}–{PAPERS_PROSUMERS_PCT[1]:.2f} %), consumers "
                          f"{_pct(day.consumers_bp)} (papers {PAPERS_CONSUMERS_PCT[0]:.2f}–{PAPERS_CONSUMERS_PCT[1]:.2f} %)")
    for col in ("home", "household", "role", "forecast", "bids/offers", "bought kWh", "sold kWh",
                "grid in kWh", "grid out kWh", "cost without Rp", "cost with Rp", "reduction"):
        table.add_column(col, justify="left" if col in ("home", "household", "role", "forecast") else "right")
    for h in day.homes:
        table.add_row(h.member_id, h.household, "prosumer" if h.prosumer else "consumer", h.forecast_method,
                      f"{h.bids}/{h.offers}", f"{h.bought_wh / 1000:.1f}", f"{h.sold_wh / 1000:.1f}",
                      f"{h.grid_import_wh / 1000:.1f}", f"{h.grid_export_wh / 1000:.1f}",
                      f"{h.reference_cost_milli_minor / 1000:.0f}", f"{h.cost_milli_minor / 1000:.0f}",
                      _pct(h.reduction_bp))
    return table


def _summary(homes, store, console) -> int:
    """Every message each home produced is at the controller exactly once, or still in its flash."""
    lost = 0
    for home in homes:
        first = home.firmware.first_seq
        produced = set(range(first, home.firmware.seqs.peek()))
        buffered = {seq for seq, _ in home.firmware.buf.pending()}
        at_controller = [m["seq"] for m in store.messages(home.node_id)]
        once = len(at_controller) == len(set(at_controller))
        if not once or set(at_controller) | buffered != produced:
            lost += 1
            missing = sorted(produced - set(at_controller) - buffered)
            console.print(f"[red]{home.node_id}: missing {missing[:10]}, each stored once: {once}[/]")
        console.print(f"{home.node_id}: {len(produced)} messages produced, {len(at_controller)} at the "
                      f"controller, {len(buffered)} still buffered on the node")
    console.print("[green]no reading lost: node → gateway → controller, each stored once[/]" if not lost
                  else f"[red]{lost} home(s) lost readings[/]")
    return 0 if not lost else 1
