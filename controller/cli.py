"""`gridhive ctl`: the fleet manager's controller commands (serve, fleet status)."""
from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import typer
from rich.console import Console
from rich.table import Table

from gridhive.broker import parse_broker
from gridhive.console import fail, plain
from gridhive.mqtt_security import TlsSetupError, tls_context

from . import registry
from .store import NotControllerDatabase, open_store, sqlite_path

app = typer.Typer(help="Fleet manager's controller: gateway uplink ingest and the fleet registry.",
                  no_args_is_help=True, add_completion=False)
fleet_app = typer.Typer(help="The fleet registry: every gateway and node with its state.", no_args_is_help=True)
app.add_typer(fleet_app, name="fleet")
console = Console()

DEFAULT_DB = "sqlite:///var/controller.db"
DB_HELP = "Database: sqlite:///path (default var/controller.db) or postgresql://user@host:port/dbname."
LOG_LEVELS = ("debug", "info", "warning", "error")
STATE_STYLE = {"online": "green", "stale": "yellow", "safe-mode": "magenta", "offline": "red", "unreachable": "red"}


def redact(url):
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def _open(db, create=True):
    try:
        return open_store(db, create=create)
    except ValueError as e:  # a URL that names no database
        fail(console, f"--db: {e}")
    except FileNotFoundError as e:
        fail(console, f"{e} (start `gridhive ctl serve --db {db}` first, or check the path)")
    except NotControllerDatabase as e:
        fail(console, f"{redact(db)} is not a controller database ({e}); "
                      "point --db at the one `gridhive ctl serve` uses")
    except Exception as e:  # server down, wrong credentials, not a database file: say which, exit 2
        fail(console, f"cannot open the controller database {redact(db)}: {e}")


def _check_db_folder(db):
    """serve creates its database file, but not a missing folder (a typo in --db), except the default's."""
    try:
        path = sqlite_path(db)
    except ValueError as e:
        fail(console, f"--db: {e}")
    if path is not None and path != sqlite_path(DEFAULT_DB) and not path.parent.is_dir():
        fail(console, f"--db: the folder {path.parent} does not exist: create it first, or check the path")


@app.command()
def serve(
    db: str = typer.Option(DEFAULT_DB, "--db", envvar="GRIDHIVE_CTL_DB", help=DB_HELP),
    broker: str = typer.Option("127.0.0.1:1883", envvar="GRIDHIVE_CTL_BROKER", help="MQTT broker as HOST:PORT."),
    client_id: str = typer.Option("gridhive-controller", envvar="GRIDHIVE_CTL_CLIENT_ID",
                                  help="MQTT client id (the broker keeps this session's queue while it is down)."),
    user: str = typer.Option(None, envvar="GRIDHIVE_CTL_USER", help="MQTT user name."),
    password: str = typer.Option(None, envvar="GRIDHIVE_CTL_PASSWORD",
                                 help="MQTT password; better from GRIDHIVE_CTL_PASSWORD (a command line is visible "
                                      "to every user of the machine)."),
    tls: bool = typer.Option(False, "--tls", envvar="GRIDHIVE_CTL_TLS",
                             help="TLS to the broker (also on when a TLS file is given)."),
    ca_file: Path = typer.Option(None, envvar="GRIDHIVE_CTL_CA_FILE",
                                 help="CA certificate(s) the broker's certificate must chain to (default: the "
                                      "system's CA store)."),
    cert_file: Path = typer.Option(None, envvar="GRIDHIVE_CTL_CERT_FILE", help="Client certificate (PEM)."),
    key_file: Path = typer.Option(None, envvar="GRIDHIVE_CTL_KEY_FILE", help="The client certificate's key (PEM)."),
    tls_insecure: bool = typer.Option(False, "--tls-insecure", envvar="GRIDHIVE_CTL_TLS_INSECURE",
                                      help="Skip the check that the broker's certificate names its host (the "
                                           "certificate chain is still verified). Off by default."),
    log_level: str = typer.Option("info", help="debug, info, warning or error."),
):
    """Ingest gateway uplinks (ghc/+/up, ghc/+/status) into the database and acknowledge them."""
    from .service import ControllerService

    try:
        host, port = parse_broker(broker)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--broker")
    if log_level.lower() not in LOG_LEVELS:
        fail(console, f"--log-level: unknown level {log_level!r}: use debug, info, warning or error")
    if (cert_file is None) != (key_file is None):
        missing = "--key-file" if key_file is None else "--cert-file"
        fail(console, f"{missing}: a client certificate needs both --cert-file and --key-file")
    _check_db_folder(db)
    context = None
    if tls or tls_insecure or ca_file or cert_file or key_file:
        try:  # a bad file stops here, named, not at the first connection
            context = tls_context(ca_file, cert_file, key_file, tls_insecure)
        except TlsSetupError as e:
            fail(console, f"--{e.option.replace('_', '-')}: {e}")
    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _open(db).close()  # fail fast, with a clear message, before connecting to the broker
    service = ControllerService(db, host, port, client_id=client_id, user=user, password=password, tls=context)
    asyncio.run(_serve(service, db, ("mqtts://" if context else "mqtt://") + broker))
    console.print("controller stopped: " + ", ".join(f"{k}={v}" for k, v in sorted(service.counters().items())))


async def _serve(service, db, broker):
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def announce():
        await service.ready.wait()
        print(f"controller ready: db {redact(db)}, broker {broker}", flush=True)

    announcer = asyncio.create_task(announce())
    try:
        await service.run(stop)
    finally:
        announcer.cancel()


def _age(now_ms, ts_ms):
    if ts_ms is None:
        return "-"
    s = max(0, (now_ms - ts_ms) // 1000)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s // size} {unit} ago"
    return f"{s} s ago"


def fleet_rows(gateways, nodes, message_counts, now_ms, stale_after_ms=registry.STALE_AFTER_MS):
    """One dict per gateway, each followed by its nodes, with the state the registry rules give."""
    by_gw = {g["gw"]: g for g in gateways}
    rows = []
    for gw in gateways:
        rows.append({"kind": "gateway", "gw": gw["gw"], "node": None,
                     "state": registry.gateway_state(gw, now_ms, stale_after_ms), "fw": gw["fw"],
                     "last_seen_ms": gw["last_seen_ms"], "seq": gw["last_gseq"], "messages": gw["items"]})
        for n in (n for n in nodes if n["gw"] == gw["gw"]):
            rows.append({"kind": "node", "gw": n["gw"], "node": n["node"],
                         "state": registry.node_state(n, by_gw.get(n["gw"]), now_ms, stale_after_ms),
                         "fw": n["fw"], "last_seen_ms": n["last_seen_ms"], "seq": n["last_seq"],
                         "messages": message_counts.get(n["node"], 0), "heap_free_b": n["heap_free_b"],
                         "rssi_dbm": n["rssi_dbm"], "buf_depth": n["buf_depth"], "buf_dropped": n["buf_dropped"],
                         "safe_mode": n["safe_mode"], "error": n["error"], "reset_cause": n["reset_cause"]})
    return rows


@fleet_app.command("status")
def fleet_status(
    db: str = typer.Option(DEFAULT_DB, "--db", envvar="GRIDHIVE_CTL_DB", help=DB_HELP),
    stale_after_s: float = typer.Option(registry.STALE_AFTER_MS / 1000, min=1,
                                        help="Call a gateway or node stale after this long without news."),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as one JSON list."),
):
    """A table of every gateway and node: state, firmware, last seen, health."""
    store = _open(db, create=False)
    try:
        rows = fleet_rows(store.gateways(), store.nodes(), store.message_counts(), int(time.time() * 1000),
                          int(stale_after_s * 1000))
    finally:
        store.close()
    if as_json:
        print(json.dumps(rows, sort_keys=True))
        return
    now_ms = int(time.time() * 1000)
    table = Table(title=f"fleet ({sum(r['kind'] == 'gateway' for r in rows)} gateways, "
                        f"{sum(r['kind'] == 'node' for r in rows)} nodes)")
    for name, justify in (("gateway", "left"), ("node", "left"), ("state", "left"), ("firmware", "left"),
                          ("last seen", "right"), ("seq", "right"), ("messages", "right"), ("heap", "right"),
                          ("RSSI", "right"), ("buffer", "right"), ("note", "left")):
        table.add_column(name, justify=justify)
    for r in rows:
        style = STATE_STYLE.get(r["state"], "")
        is_node = r["kind"] == "node"
        note = (r["error"] or "") if is_node else ""
        table.add_row(
            plain("" if is_node else r["gw"], "bold"), plain(r["node"] or ""), plain(r["state"], style),
            plain(r["fw"] or "-"),
            _age(now_ms, r["last_seen_ms"]), str(r["seq"]) if r["seq"] >= 0 else "-", str(r["messages"]),
            f"{r['heap_free_b'] // 1024} KiB" if is_node and r["heap_free_b"] is not None else "",
            f"{r['rssi_dbm']} dBm" if is_node and r["rssi_dbm"] is not None else "",
            f"{r['buf_depth']} ({r['buf_dropped']} lost)" if is_node and r["buf_depth"] is not None else "",
            plain(note))
    # Created here so it measures the terminal it prints to; piped, 80 columns would cut the headers.
    Console(width=None if sys.stdout.isatty() else 160).print(table)
