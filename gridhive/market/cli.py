"""`gridhive ctl market ...`: the fleet manager's view of the market store (read-only).

Mount with `ctl_app.add_typer(gridhive.market.cli.app, name="market")`. The store is the
market loop's SQLite file: `--db`, or the GRIDHIVE_MARKET_DB environment variable.
"""
from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from gridhive.gridops import ConsentRegistry, build_export, planned_export_wh, write_files

from .clearing import book_depth
from .loop import MarketStore
from .model import Community
from .settlement import statements

app = typer.Typer(help="Market: intervals, order-book depth, results, statements, export files.",
                  no_args_is_help=True)
console = Console()
DB = typer.Option(Path("var/market.sqlite"), "--db", envvar="GRIDHIVE_MARKET_DB",
                  help="The market loop's SQLite store.")
INTERVAL = typer.Argument(None, help="Interval start: ISO time (UTC) or ms; default: the latest.")


def _store(db: Path) -> MarketStore:
    if not db.exists():
        raise typer.BadParameter(f"no market store at {db}", param_hint="--db")
    return MarketStore(db)


def _interval_ms(store: MarketStore, interval: str | None) -> int:
    if interval is None:
        known = store.result_intervals() + store.open_intervals()
        if not known:
            raise typer.BadParameter("the store has no intervals yet", param_hint="INTERVAL")
        return max(known)
    if interval.isdigit():
        return int(interval)
    try:
        moment = datetime.fromisoformat(interval.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"{interval!r} is neither ms nor an ISO time",
                                 param_hint="INTERVAL") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _money(milli_minor: int) -> str:
    return f"{milli_minor / 1000:.3f}"  # display only: minor units with three decimals


@app.command()
def show(interval: str = INTERVAL, db: Path = DB, as_json: bool = typer.Option(False, "--json")):
    """One interval: state, price, volume, welfare, rejections, the result's signature."""
    store = _store(db)
    t0 = _interval_ms(store, interval)
    stored = store.result(t0)
    state = "settled" if store.has_settlement(t0) else "cleared" if stored else "open"
    summary = {"interval_start_ms": t0, "interval_start": _iso(t0), "state": state,
               "orders": len(store.orders(t0)), "rejected": len(store.rejections(t0))}
    if stored:
        result, signed = stored
        summary.update(mechanism=str(result.mechanism),
                       clearing_price_minor_per_kwh=result.clearing_price_minor_per_kwh,
                       trades=len(result.trades), energy_wh=result.energy_wh,
                       curtailed_wh=result.curtailed_wh,
                       welfare_milli_minor=result.welfare_milli_minor,
                       digest=signed.digest, signature=signed.signature)
    if as_json:
        print(json.dumps(summary, sort_keys=True))
        return
    table = Table(title=f"market interval {_iso(t0)}", show_header=False)
    for key, value in summary.items():
        table.add_row(key, str(value))
    console.print(table)


@app.command()
def depth(interval: str = INTERVAL, db: Path = DB):
    """Order-book depth per price level: volume at each price and cumulative demand/supply."""
    store = _store(db)
    t0 = _interval_ms(store, interval)
    table = Table(title=f"order book {_iso(t0)}")
    for column in ("price /kWh", "bids Wh", "offers Wh", "demand ≥ price Wh",
                   "supply ≤ price Wh"):
        table.add_column(column, justify="right")
    for level in book_depth(store.orders(t0)):
        table.add_row(*(str(v) for v in level))
    console.print(table)


@app.command()
def results(interval: str = INTERVAL, db: Path = DB):
    """The trades of a cleared interval."""
    store = _store(db)
    t0 = _interval_ms(store, interval)
    stored = store.result(t0)
    if stored is None:
        console.print(f"interval {_iso(t0)} is not cleared yet")
        raise typer.Exit(1)
    table = Table(title=f"trades {_iso(t0)}")
    for column in ("bid", "offer", "buyer", "seller", "Wh", "price", "fee", "kind"):
        table.add_column(column)
    for t in stored[0].trades:
        table.add_row(t.bid_id, t.offer_id, t.buyer_id, t.seller_id, str(t.energy_wh),
                      str(t.price_minor_per_kwh), str(t.fee_minor_per_kwh), str(t.kind))
    console.print(table)


@app.command("statements")
def statements_cmd(period: str = typer.Option("day", help="day or month"),
                   member: str = typer.Option(None, help="Only this member."), db: Path = DB):
    """Statements per member and period from the settled intervals (money in minor units)."""
    store = _store(db)
    if period not in ("day", "month"):
        raise typer.BadParameter("must be day or month", param_hint="--period")
    table = Table(title=f"statements per {period}")
    for column in ("period", "member", "bought Wh", "sold Wh", "grid in Wh", "grid out Wh",
                   "cost", "without market", "reduction %"):
        table.add_column(column, justify="right")
    for s in statements(store.settlements(), period):
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
               consents: Path = typer.Option(None, help="Consent log (JSON lines); default: "
                                                        "consent.jsonl next to the store."),
               db: Path = DB):
    """Write CSV/JSON schedules and metering per congestion point for the grid operator."""
    store = _store(db)
    community = store.meta("community", Community)
    if community is None:
        raise typer.BadParameter("the store has no community yet", param_hint="--db")
    registry = ConsentRegistry.load(consents or db.with_name("consent.jsonl"))
    intervals = sorted(set(store.result_intervals()) | set(store.open_intervals()))
    planned = [(t0, planned_export_wh(store.orders(t0))) for t0 in intervals]
    metered = [(s.interval_start_ms, dict(s.metered_net_wh)) for s in store.settlements()]
    export = build_export(recipient, community, planned, metered, (), registry)
    for path in write_files(export, out):
        console.print(f"wrote {path}")
