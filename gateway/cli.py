"""`gridhive gateway ...`: run the gateway service and set up its broker.

Mounted by the top-level CLI as `gridhive gateway`; also runs as `python -m gridhive.gateway`.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer
from rich.console import Console

from gridhive.console import fail, plain

from .config import ConfigError, GatewayConfig, load_config

app = typer.Typer(help="Gateway service on the Raspberry Pi: ingest, storage, relay commands, uplink.",
                  no_args_is_help=True, add_completion=False)
err = Console(stderr=True)

CONFIG = typer.Option(Path("gateway.toml"), "--config", "-c", help="The gateway's TOML config (docs/GATEWAY.md).")


def _config_error(path: Path, e: ConfigError):
    # An error without a key is about the file itself and names it already.
    fail(err, f"{path}: {e}" if e.key else str(e))


def _load(path: Path) -> GatewayConfig:
    try:
        return load_config(path)
    except ConfigError as e:
        _config_error(path, e)


@app.command()
def run(config: Path = CONFIG):
    """Run the gateway until SIGTERM/SIGINT."""
    cfg = _load(config)
    logging.basicConfig(level=cfg.gateway.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .service import run_gateway

    try:
        code = run_gateway(cfg)
    except ConfigError as e:  # found at start-up: the HTTP port in use, a data dir it cannot write
        _config_error(config, e)
    raise typer.Exit(code)


@app.command()
def agent(config: Path = CONFIG):
    """Run the ledger agent: attest the households' interval energies and enter their orders."""
    cfg = _load(config)
    logging.basicConfig(level=cfg.gateway.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .ledger_agent import run_agent

    try:
        code = run_agent(cfg)
    except ConfigError as e:
        _config_error(config, e)
    raise typer.Exit(code)


@app.command("check-config")
def check_config(config: Path = CONFIG):
    """Validate the config (with environment overrides) and summarise it."""
    cfg = _load(config)
    typer.echo(f"gateway {cfg.gateway_id}: {len(cfg.registry)} nodes in "
              f"{len(cfg.registry.households())} households; database {cfg.db_path}")
    typer.echo(f"broker {cfg.broker.host}:{cfg.broker.port} as {cfg.broker.user}")
    from .mosquitto import uplink_summary

    typer.echo(uplink_summary(cfg))
    m = cfg.meter
    if m:
        where = f"{m.host} port {m.port}" if m.transport == "tcp" else f"{m.serial_port} at {m.baudrate} baud"
        typer.echo(f"meter: {m.kind} over Modbus {m.transport.upper()} ({where}, unit {m.device_id}) for household "
                   f"{m.household}, every {m.period_s:g} s")
    else:
        typer.echo("meter: none")


@app.command("mosquitto-config")
def mosquitto_config(
    config: Path = CONFIG,
    out_dir: Path = typer.Option(Path("mosquitto"), "--out", "-o", help="Folder for mosquitto.conf, passwd and acl."),
    python_hash: bool = typer.Option(False, "--python-hash",
                                     help="Hash passwords here even when mosquitto_passwd is installed."),
    run_as: str = typer.Option("mosquitto", help="The system user mosquitto drops to (its `user` setting)."),
):
    """Write mosquitto.conf, a password file and an ACL: each node reaches only gh/<its id>/..."""
    cfg = _load(config)
    from .mosquitto import NoSuchUser, uplink_summary, write_broker_files

    if out_dir.exists() and not out_dir.is_dir():
        fail(err, f"--out: {out_dir} is a file, not a folder: give the folder for mosquitto.conf, passwd and acl")
    try:
        files = write_broker_files(cfg, out_dir, tool="" if python_hash else None, run_as=run_as)
    except ConfigError as e:
        _config_error(config, e)
    except NoSuchUser as e:
        fail(err, f"--run-as: {e}")
    except OSError as e:
        fail(err, f"--out: cannot write {e.filename or out_dir} ({e.strerror}): choose a folder this user "
                  "may create and write")
    except RuntimeError as e:
        fail(err, str(e), code=1)
    typer.echo(f"wrote {files['conf']}, {files['passwd']} ({files['users']} users, hashed by {files['hasher']}) "
              f"and {files['acl']}")
    typer.echo(uplink_summary(cfg))
    if files["unreachable"]:
        err.print(plain(f"warning: mosquitto drops to user {run_as!r}, who cannot enter {files['unreachable']}: "
                        "it would fail to open its password file. Choose an --out below folders that user may "
                        f"enter, or allow it (chmod o+x {files['unreachable']})", "yellow"), soft_wrap=True)
    typer.echo(f"start it with: mosquitto -c {files['conf']}")


@app.command("systemd-unit")
def systemd_unit(
    config: Path = typer.Option(Path("/etc/gridhive/gateway.toml"), "--config", "-c", help="Config path for ExecStart."),
    user: str = typer.Option("gridhive", help="The service's user."),
    exe: str = typer.Option("/opt/gridhive/.venv/bin/gridhive", help="Path of the gridhive command."),
    watchdog_s: int = typer.Option(30, min=2, help="WatchdogSec: restart when the loop stalls this long."),
):
    """Print a systemd unit (Type=notify, watchdog) for the gateway."""
    from .sdnotify import systemd_unit as unit

    typer.echo(unit(str(config), user=user, exe=exe, watchdog_s=watchdog_s), nl=False)
