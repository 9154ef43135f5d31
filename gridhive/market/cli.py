"""`gridhive ctl market ...`: the controller's market loop (`serve`) and the fleet manager's view
of the market on the ledger: intervals, order-book depth, trades, statements, grid-operator files.

Every command talks to one validator's API: `--ledger`, or the GRIDHIVE_LEDGER_API environment
variable. INTERVAL is an ISO time (UTC) or Unix seconds (the ledger's `interval_start_s`).
"""
from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from gridhive.console import fail
from gridhive.gridops import ConsentRegistry, build_export, planned_export_wh, write_files
from gridhive.ledger.client import LedgerClient

from .clearing import book_depth
from .loop import LedgerMarket, serve
from .settlement import statements

app = typer.Typer(help="Market on the ledger: the controller's loop, intervals, order-book depth, results, "
                       "statements, export files.", no_args_is_help=True)
console = Console()
LEDGER = typer.Option("127.0.0.1:26700", "--ledger", envvar="GRIDHIVE_LEDGER_API",
                      help="A validator's API: HOST:PORT, http://HOST:PORT or unix:/path.")
INTERVAL = typer.Argument(None, help="Interval start: ISO time (UTC) or Unix seconds; default: the latest.")
SINCE = typer.Option(None, help="From this time (ISO, UTC, or Unix seconds); default: 24 h before --until.")
UNTIL = typer.Option(None, help="Until this time (exclusive); default: now.")


def _market(ledger: str) -> LedgerMarket:
    try:
        return LedgerMarket(LedgerClient(ledger, timeout_s=10))
    except OSError as exc:
        raise typer.BadParameter(f"no validator answers at {ledger}: {exc}", param_hint="--ledger") from None


def _seconds(text: str, hint: str) -> int:
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is neither Unix seconds nor an ISO time", param_hint=hint) from None
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())


def _interval(market: LedgerMarket, interval: str | None) -> tuple[int, dict]:
    if interval is None:
        known = market.unsettled() or [s for s in [market.last_settled()] if s is not None]
        if not known:
            raise typer.BadParameter("the ledger has no market intervals yet", param_hint="INTERVAL")
        start = max(known)
    else:
        start = _seconds(interval, "INTERVAL")
    record = market.interval(start)
    if record is None:
        console.print(f"no market interval at {_iso(start)} on the ledger")
        raise typer.Exit(1)
    return start, record


def _window(since: str | None, until: str | None) -> tuple[int, int]:
    end = _seconds(until, "--until") if until else int(time.time())
    return (_seconds(since, "--since") if since else end - 86_400), end


def _iso(start_s: int) -> str:
    return datetime.fromtimestamp(start_s, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _money(milli_minor: int) -> str:
    return f"{milli_minor / 1000:.3f}"  # display only: minor units with three decimals


@app.command("serve")
def serve_cmd(ledger: str = LEDGER,
              operator_key: Path = typer.Option(..., "--operator-key", help="The operator's Ed25519 seed (hex)."),
              poll_ms: int = typer.Option(1_000, min=50, max=60_000, help="Longest wait for a new block."),
              log_level: str = typer.Option("info", help="debug, info, warning or error.")):
    """Run the controller's market loop until SIGINT/SIGTERM: clear each interval at its gate
    closure, settle it after its reading grace, as operator-signed ledger transactions."""
    from gridhive.ledger.config import ConfigError, load_key

    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        key = load_key(operator_key)
    except (OSError, ConfigError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--operator-key") from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        counts = serve(ledger, key, stop, poll_ms)
    except ValueError as exc:           # the key is not this chain's operator
        fail(console, str(exc))
    logging.getLogger(__name__).info("market loop stopped: %s", dict(counts))


@app.command()
def show(interval: str = INTERVAL, ledger: str = LEDGER, as_json: bool = typer.Option(False, "--json")):
    """One interval: state, orders, readings, mechanism, price, volume, welfare, its transactions."""
    market = _market(ledger)
    start, record = _interval(market, interval)
    summary = {"interval_start_s": start, "interval_start": _iso(start), "state": record["status"],
               "orders": len(record["orders"]), "readings": len(record["readings"])}
    if record["status"] != "open":
        trades = market.trades(record)
        summary.update(mechanism=record["clearing"]["mechanism"],
                       clearing_price_minor_per_kwh=record["clearing"]["clearing_price_minor_per_kwh"],
                       trades=len(trades), energy_wh=sum(t["energy_wh"] for t in trades),
                       curtailed_wh=record["clearing"]["curtailed_wh"],
                       welfare_milli_minor=sum(t["energy_wh"] * (t["bid_price_minor_per_kwh"]
                                                                 - t["offer_price_minor_per_kwh"]) for t in trades),
                       clearing_tx=record["clearing_tx"])
    if record["status"] == "settled":
        summary.update(transfers=len(record["settlement"]["transfers"]), settlement_tx=record["settlement_tx"])
    if as_json:
        print(json.dumps(summary, sort_keys=True))
        return
    table = Table(title=f"market interval {_iso(start)}", show_header=False)
    for key, value in summary.items():
        table.add_row(key, str(value))
    console.print(table)


@app.command()
def depth(interval: str = INTERVAL, ledger: str = LEDGER):
    """Order-book depth per price level: volume at each price and cumulative demand/supply."""
    market = _market(ledger)
    start, _ = _interval(market, interval)
    table = Table(title=f"order book {_iso(start)}")
    for column in ("price /kWh", "bids Wh", "offers Wh", "demand ≥ price Wh", "supply ≤ price Wh"):
        table.add_column(column, justify="right")
    for level in book_depth(market.orders(start)):
        table.add_row(*(str(v) for v in level))
    console.print(table)


@app.command()
def results(interval: str = INTERVAL, ledger: str = LEDGER):
    """The trades of a cleared interval, with what settlement paid (minor units)."""
    market = _market(ledger)
    start, record = _interval(market, interval)
    if record["status"] == "open":
        console.print(f"interval {_iso(start)} is not cleared yet")
        raise typer.Exit(1)
    table = Table(title=f"trades {_iso(start)}")
    for column in ("trade", "buyer", "seller", "Wh", "price", "fee", "status", "paid", "fee paid"):
        table.add_column(column)
    for t in market.trades(record):
        table.add_row(t["id"], t["buyer_id"], t["seller_id"], str(t["energy_wh"]), str(t["price_minor_per_kwh"]),
                      str(t["fee_minor_per_kwh"]), t["status"], str(t["paid_minor"]), str(t["fee_minor"]))
    console.print(table)


@app.command("statements")
def statements_cmd(period: str = typer.Option("day", help="day or month"),
                   member: str = typer.Option(None, help="Only this household."),
                   since: str = SINCE, until: str = UNTIL, ledger: str = LEDGER):
    """Statements per household and period from the settled intervals (exact, in minor units)."""
    if period not in ("day", "month"):
        raise typer.BadParameter("must be day or month", param_hint="--period")
    market = _market(ledger)
    settled = [market.settlement(start, record) for start, record in market.intervals(*_window(since, until))
               if record["status"] == "settled"]
    table = Table(title=f"statements per {period}")
    for column in ("period", "member", "bought Wh", "sold Wh", "grid in Wh", "grid out Wh",
                   "cost", "without market", "reduction %"):
        table.add_column(column, justify="right")
    for s in statements(settled, period):
        if member and s.member_id != member:
            continue
        reduction = "-" if s.reduction_bp is None else f"{s.reduction_bp / 100:.2f}"
        table.add_row(s.period, s.member_id, str(s.bought_wh), str(s.sold_wh),
                      str(s.grid_import_wh), str(s.grid_export_wh), _money(s.cost_milli_minor),
                      _money(s.reference_cost_milli_minor), reduction)
    console.print(table)


@app.command("export")
def export_cmd(out: Path = typer.Option(Path("export"), help="Directory for the files."),
               recipient: str = typer.Option("dso", help="Who receives them (consent key)."),
               consents: Path = typer.Option(Path("consent.jsonl"), help="Consent log (JSON lines)."),
               since: str = SINCE, until: str = UNTIL, ledger: str = LEDGER):
    """Write CSV/JSON schedules and metering per congestion point for the grid operator."""
    market = _market(ledger)
    planned, metered, households = [], [], set()
    for start, record in market.intervals(*_window(since, until)):
        orders = market.orders(start)
        planned.append((start * 1000, planned_export_wh(orders)))
        households |= {o.member_id for o in orders}
        if record["status"] == "settled":
            metered.append((start * 1000, record["settlement"]["metered_net_wh"]))
            households |= set(record["settlement"]["metered_net_wh"])
    community = market.contract.community({h: market.client.state("members", h) for h in sorted(households)})
    export = build_export(recipient, community, planned, metered, (), ConsentRegistry.load(consents),
                          period_ms=market.interval_s * 1000)
    for path in write_files(export, out):
        console.print(f"wrote {path}")
