"""`gridhive demo`: a small community on one machine, shown live, then its market day.

Virtual homes run the real node firmware against a broker (Mosquitto when installed, else the
embedded amqtt broker). The homes are shared among a few gateways, as streets would be. Each
gateway is three real processes, as on its Raspberry Pi: the gateway service verifies, stores and
acknowledges what its homes publish and forwards it to a real controller process; a ledger
validator (the gateways are the community ledger's authorities); and the ledger agent, which
attests its homes' metered interval energy and enters their orders on the ledger. The live view
shows each home's power, voltage, EV charger relay and energy counters from the controller's
database, each gateway's counts, and the chain advancing. Halfway through, the demo switches one
home's EV charger on through its gateway's HTTP API. At the end it checks that every message each
home produced reached the controller exactly once, and shows the homes' trading agents on one
market day (gridhive.community): LiteRT forecasts, orders, clearing of all 96 intervals,
settlement against the day's metering, and each home's cost with and without the market.
"""
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Group
from rich.markup import escape
from rich.live import Live
from rich.table import Table

from gridhive.broker import free_port, start_broker, stop_process, wait_for_port
from gridhive.community import DEMO_MARKET, PAPERS_CONSUMERS_PCT, PAPERS_PROSUMERS_PCT, simulate_day
from gridhive.controller.store import open_store
from gridhive.hardware.virtual_node import GRID_CHANNEL, VirtualNode, load_of
from gridhive.ledger.client import LedgerClient
from gridhive.ledger.testnet import generate
from gridhive.market.loop import LedgerMarket
from gridhive.market.settlement import statements

TELEMETRY_PERIOD_S = 2
REFRESH_S = 0.5
MARKET_REFRESH_S = 2.0
MINOR_PER_RP = 100  # the ledger counts 1/10,000 CHF (minor_per_major): 100 minor units = 1 Rp
# A short market interval so that a run of a minute or two sees orders, clearing and settlement.
LEDGER_PARAMS = {"interval_s": 15, "gate_closure_s": 3, "reading_grace_s": 8}
LEDGER_CONSENSUS = {"block_period_ms": 1000, "empty_block_interval_ms": 1000}
ATTEST_DELAY_S = 3  # > the telemetry period: the interval's last messages are in before attesting


@dataclass
class Gateway:
    """One street's gateway: its homes, its processes' addresses and the processes themselves."""

    gateway_id: str
    homes: list
    http_port: int
    ledger_api: str
    procs: dict = field(default_factory=dict)  # role -> Popen

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


def gateway_config(path: Path, gw: Gateway, broker, uplink, net, node) -> Path:
    """gateway.toml for one demo gateway: its homes' registry, its local broker, the uplink to the
    controller's broker, and its ledger agent's validator, keys and interval."""
    lines = [
        "[gateway]", f'id = "{gw.gateway_id}"', f'data_dir = "{path.parent}"', 'log_level = "WARNING"',
        "[broker]", f'host = "{broker.host}"', f"port = {broker.port}",
        # amqtt speaks MQTT 3.1.1 only; Mosquitto gets the gateway's MQTT 5 session with manual acks.
        f'mqtt_version = "{"3.1.1" if broker.kind == "embedded" else "5"}"',
        "[storage]", f"interval_s = {LEDGER_PARAMS['interval_s']}",
        "[http]", f"port = {gw.http_port}",
        "[homeassistant]", "enabled = false",
        "[uplink]", f'host = "{uplink.host}"', f"port = {uplink.port}", "tls = false", "retry_s = 2",
        "status_interval_s = 5",
        "[ledger]", f'api = "{node.api}"', f'genesis = "{net.dir / "genesis.json"}"',
        f'key_file = "{node.dir / "validator.key"}"', f"attest_delay_s = {ATTEST_DELAY_S}", "history_intervals = 2",
        "tick_s = 1.0",
    ]
    for home in gw.homes:  # the registry follows each node's own config: its CT channels and relays
        n = home.node_id
        lines += [f"[nodes.{n}]", f'secret_hex = "{home.secret.hex()}"', f'household = "{n}"',
                  f'member_key_file = "{net.member_keys[n]}"']
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
    except OSError:
        return {}


def _homes_table(gateways, latest, stored, elapsed_s, duration_s, broker_kind) -> Table:
    homes = sum(len(gw.homes) for gw in gateways)
    table = Table(title=f"gridhive demo — {homes} homes, {len(gateways)} gateways, {broker_kind} broker, "
                        f"{elapsed_s:.0f}/{duration_s:.0f} s")
    for col, justify in (("home", "left"), ("gateway", "left"), ("load", "left"), ("grid W", "right"),
                         ("V", "right"), ("EV relay", "center"), ("EV A", "right"), ("in Wh", "right"),
                         ("out Wh", "right"), ("at controller", "right"), ("buffered", "right")):
        table.add_column(col, justify=justify)
    for gw in gateways:
        for home in gw.homes:
            tele = latest.get(home.node_id)
            if tele:
                mains, ev = tele["ch"][0], tele["ch"][1]
                relay = tele["relays"][0]
                row = [f"{mains['power_w']:+d}", f"{(tele['vrms_mv'] or 0) / 1000:.1f}",
                       ("[green]on[/]" if relay["on"] else "off") + (f" [red]{escape(relay['trip'])}[/]" if relay["trip"] else ""),
                       f"{ev['irms_ma'] / 1000:.1f}", str(mains["energy_in_wh"]), str(mains["energy_out_wh"])]
            else:
                row = ["…"] * 6
            table.add_row(home.node_id, gw.gateway_id, home.load.kind, *row, str(stored.get(home.node_id, 0)),
                          str(home.firmware.buf.depth()))
    return table


def _gateways_table(gateways, stats: dict, ledger: dict, events: list[str]) -> Table:
    """Per gateway: its ingest counts, its uplink, and its validator's view of the chain."""
    table = Table(title="gateways and their ledger validators", caption=" · ".join(events[-3:]) or None)
    for col in ("gateway", "accepted", "duplicates", "rejected", "stored", "uplink outbox", "uplink",
                "chain height", "last block", "peers"):
        table.add_column(col, justify="left" if col == "gateway" else "right")
    for gw in gateways:
        s, v = stats.get(gw.gateway_id) or {}, ledger.get(gw.gateway_id) or {}
        row = ([str(s["accepted_total"]), str(s["duplicates"]), str(s["rejected_total"]), str(s["stored_messages"]),
                str(s["outbox_items"]), "[green]up[/]" if s["uplink_connected"] else "[red]down[/]"]
               if s else ["…"] * 6)
        if v:
            last = v.get("last_commit") or {}
            age = f"{time.time() - last['time_ms'] / 1000:.1f} s ago, {len(last['signers'])} signers" if last else "—"
            peers = sum(1 for p in v["peers"] if p["connected"])
            row += [str(v["height"]), age, f"{peers}/{len(v['peers'])}"]
        else:
            row += ["…"] * 3
        table.add_row(gw.gateway_id, *row)
    return table


def run_demo(nodes: int, duration_s: float, broker: str, console, gateways: int = 4) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="gridhive-demo-"))
    count = min(gateways, nodes)
    console.print(f"starting {count + 1} brokers ({broker}): one per gateway for its homes, one for the controller …")
    # As on site: each gateway's homes talk to the broker on that gateway; gateways reach the
    # controller through its own broker.
    brokers = [start_broker(broker, workdir / f"broker-{b}") for b in range(count + 1)]
    uplink = brokers[count]
    console.print(f"{uplink.kind} brokers on {', '.join(f'{b.host}:{b.port}' for b in brokers)}; state in {workdir}")
    homes = [VirtualNode(workdir / "nodes" / f"vnode-{i + 1}", f"vnode-{i + 1}", brokers[i % count].host,
                         brokers[i % count].port, load_of(i, "mixed"), seed=i, period_s=TELEMETRY_PERIOD_S)
             for i in range(nodes)]
    # Each gateway is a ledger authority; a home with PV may sell, the others only buy.
    net = generate(workdir / "ledger", count, chain_id="gridhive-demo", params=LEDGER_PARAMS,
                   consensus=LEDGER_CONSENSUS,
                   members=[(h.node_id, i % count, "prosumer" if h.load.kind == "pv" else "consumer")
                            for i, h in enumerate(homes)])
    streets = [Gateway(f"gw-{g + 1}", homes[g::count], free_port(), net.nodes[g].api) for g in range(count)]
    db_url = f"sqlite:///{workdir / 'controller.sqlite3'}"
    logs = open(workdir / "services.log", "ab")

    def spawn(*args) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", *args], stdout=logs, stderr=logs)

    console.print(f"starting the controller and {count} gateways, each with its ledger validator and agent …")
    controller = spawn("gridhive.controller", "serve", "--db", db_url,
                       "--broker", f"{uplink.host}:{uplink.port}", "--log-level", "warning")
    for gw, node, local in zip(streets, net.nodes, brokers):
        (workdir / gw.gateway_id).mkdir()
        config = gateway_config(workdir / gw.gateway_id / "gateway.toml", gw, local, uplink, net, node)
        gw.procs["validator"] = spawn("gridhive.ledger", "run", "--config", str(node.config), "--log-level", "warning")
        gw.procs["gateway"] = spawn("gridhive.gateway", "run", "--config", str(config))
        gw.procs["agent"] = spawn("gridhive.gateway", "agent", "--config", str(config))
    # The controller's market loop clears and settles every interval on the ledger as the operator.
    market_loop = spawn("gridhive.market", "serve", "--ledger", net.nodes[0].api,
                        "--operator-key", str(net.dir / "operator.key"), "--poll-ms", "500", "--log-level", "warning")
    started_s = int(time.time())
    try:
        for gw in streets:
            wait_for_port(gw.http_port, timeout_s=60)
        for home in homes:
            home.start()
        store = open_store(db_url)
        try:
            code = _live(streets, store, duration_s, uplink.kind, console, MarketView(net.nodes[0].api, started_s))
            console.print("\nstopping: delivering what the homes still have buffered …")
            for home in homes:
                home.stop_measuring()
            _drain(homes, store, timeout_s=15)
            code = code or _summary(homes, store, console)
        finally:
            store.close()
        code = code or _chain_summary(streets, console)
        console.print(_statements_table(net.nodes[0].api, homes, started_s))
        console.print(_market_table([h.node_id for h in homes]))
        return code
    except TimeoutError:
        console.print(f"[red]a gateway did not start; see {workdir / 'services.log'}[/]")
        return 1
    finally:
        for home in homes:
            home.stop()
        for proc in [market_loop] + [p for gw in streets for p in gw.procs.values()] + [controller]:
            stop_process(proc)
        logs.close()
        for b in brokers:
            b.stop()


def _latest_tele(store) -> tuple[dict, dict]:
    """Each home's newest telemetry and how many of its messages the controller holds."""
    latest = {row["node"]: json.loads(row["payload"]) for row in store.latest("tele")}
    return latest, store.message_counts()


def _ledger_status(clients: dict) -> dict:
    """Each gateway's validator status; a validator still starting (or gone) is left out."""
    out = {}
    for gateway_id, client in clients.items():
        try:
            out[gateway_id] = client.status()
        except OSError:
            client.close()
    return out


class MarketView:
    """The market's intervals as the ledger shows them, for the live view. Settled intervals are
    kept (they no longer change); the others are read again every MARKET_REFRESH_S."""

    def __init__(self, api: str, since_s: int):
        self.api = api
        self.since_s = since_s
        self.market: LedgerMarket | None = None
        self.rows: dict[int, list[str]] = {}
        self._read_at = 0.0

    def table(self) -> Table:
        if time.monotonic() - self._read_at >= MARKET_REFRESH_S:
            self._read_at = time.monotonic()
            try:
                self._refresh()
            except OSError:      # the validator is still starting
                self.market = None
        interval = self.market.interval_s if self.market else "…"
        table = Table(title=f"market on the ledger: {interval} s intervals, cleared and settled by the "
                            f"validators' contract")
        for col in ("interval (UTC)", "state", "bids", "offers", "readings", "price Rp/kWh", "traded Wh",
                    "transfers"):
            table.add_column(col, justify="left" if col in ("interval (UTC)", "state") else "right")
        for start in sorted(self.rows)[-6:]:
            table.add_row(*self.rows[start])
        return table

    def _refresh(self) -> None:
        if self.market is None:
            self.market = LedgerMarket(LedgerClient(self.api, timeout_s=2))
        step = self.market.interval_s
        now_s = int(time.time())
        for start, record in self.market.intervals(self.since_s, now_s + 3 * step):
            if self.rows.get(start, [None, None])[1] == "settled":
                continue
            sides = [o["side"] for o in record["ordered"].values()]
            row = [time.strftime("%H:%M:%S", time.gmtime(start)), record["status"], str(sides.count("buy")),
                   str(sides.count("sell")), str(len(record["readings"])), "", "", ""]
            if record["status"] != "open":
                price = record["clearing"]["clearing_price_minor_per_kwh"]
                row[5] = f"{price / MINOR_PER_RP:.2f}" if price is not None else "—"
                row[6] = str(sum(t["energy_wh"] for t in self.market.trades(record)))
            if record["status"] == "settled":
                row[7] = str(len(record["settlement"]["transfers"]))
            self.rows[start] = row


def _live(gateways, store, duration_s, broker_kind, console, market: MarketView) -> int:
    events: list[str] = []
    commanded = False
    t0 = time.monotonic()
    last_print = 0.0
    clients = {gw.gateway_id: LedgerClient(gw.ledger_api, timeout_s=2) for gw in gateways}
    first = gateways[0]
    target = first.homes[0].node_id
    try:
        with Live(console=console, refresh_per_second=4) as live:
            while (elapsed := time.monotonic() - t0) < duration_s:
                latest, stored = _latest_tele(store)
                stats = {gw.gateway_id: _get(f"{gw.api}/api/stats") for gw in gateways}
                ledger = _ledger_status(clients)
                if not commanded and elapsed > duration_s / 2 and target in latest:
                    commanded = True
                    url = f"{first.api}/api/nodes/{target}/relays/0"
                    events.append(f"{elapsed:.0f}s: EV charger on at {target} (POST {url})")
                    reply = _get(url, {"action": "on"})
                    events.append(f"{target}: " + (f"relay {reply.get('state')}" if reply.get("ok")
                                                   else f"refused: {reply.get('reason') or reply.get('error')}"))
                live.update(Group(_homes_table(gateways, latest, stored, elapsed, duration_s, broker_kind),
                                  _gateways_table(gateways, stats, ledger, events), market.table()))
                if not console.is_terminal and elapsed - last_print >= 10:
                    last_print = elapsed
                    heights = [v["height"] for v in ledger.values()]
                    console.print(f"{elapsed:.0f} s: {sum(stored.values())} messages at the controller from "
                                  f"{len(stored)} homes; gateways accepted "
                                  f"{sum(s.get('accepted_total', 0) for s in stats.values())}; chain height "
                                  f"{max(heights) if heights else '—'}")
                time.sleep(REFRESH_S)
    except KeyboardInterrupt:
        pass
    finally:
        for client in clients.values():
            client.close()
    return 0


def _chain_summary(gateways, console) -> int:
    """Every gateway's validator holds the same final chain: the same block at a common height."""
    clients = [LedgerClient(gw.ledger_api, timeout_s=5) for gw in gateways]
    try:
        statuses = [c.status() for c in clients]
        common = min(s["height"] for s in statuses)
        hashes = {json.dumps(c.block(common)["block"], sort_keys=True) for c in clients} if common else set()
    except OSError as exc:
        console.print(f"[red]a ledger validator stopped answering: {exc}[/]")
        return 1
    finally:
        for c in clients:
            c.close()
    if common == 0 or len(hashes) != 1:
        console.print(f"[red]the ledger did not advance to one chain: heights "
                      f"{[s['height'] for s in statuses]}, {len(hashes)} different blocks[/]")
        return 1
    console.print(f"[green]ledger: {len(gateways)} validators, one chain, height {common} final on every "
                  f"gateway[/]")
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


def _statements_table(api: str, homes, since_s: int) -> Table:
    """Each home's settled result on the ledger during the run: the papers' metric on live data."""
    client = LedgerClient(api, timeout_s=10)
    try:
        market = LedgerMarket(client)
        settled = [market.settlement(start, record)
                   for start, record in market.intervals(since_s, int(time.time()) + 1)
                   if record["status"] == "settled"]
    finally:
        client.close()
    per_home = {s.member_id: s for s in statements(settled, "month")}
    rp = 1000 * MINOR_PER_RP  # milli-minor per Rp
    table = Table(title=f"settled on the ledger during the run: {len(settled)} intervals "
                        f"(energy and money moved together by each settlement transaction)")
    for col in ("home", "load", "bought Wh", "sold Wh", "grid in Wh", "grid out Wh", "cost Rp",
                "without market Rp", "reduction"):
        table.add_column(col, justify="left" if col in ("home", "load") else "right")
    for home in homes:
        s = per_home.get(home.node_id)
        if s is None:
            table.add_row(home.node_id, home.load.kind, *["—"] * 7)
            continue
        table.add_row(home.node_id, home.load.kind, str(s.bought_wh), str(s.sold_wh), str(s.grid_import_wh),
                      str(s.grid_export_wh), f"{s.cost_milli_minor / rp:.3f}",
                      f"{s.reference_cost_milli_minor / rp:.3f}", _pct(s.reduction_bp))
    return table


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
