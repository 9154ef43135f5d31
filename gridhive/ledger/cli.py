"""`python -m gridhive.ledger …` (mounted by the main CLI as `gridhive gateway ledger` and
`gridhive ctl ledger`): run a validator, show its status, generate a testnet."""
import asyncio
import json
import logging
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from gridhive.console import escape, fail

app = typer.Typer(help="The community ledger: a proof-of-authority validator and its tools.",
                  no_args_is_help=True, add_completion=False)
console = Console()


@app.command()
def run(config: Path = typer.Option(..., "--config", "-c", help="validator.toml"),
        log_level: str = typer.Option("info", help="debug, info, warning or error.")):
    """Run one validator until SIGINT/SIGTERM (exit code 3 if it halted on a diverged state)."""
    from .config import ConfigError, load
    from .service import Validator
    from .store import StoreError

    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        validator = Validator(load(config))
    except (ConfigError, StoreError) as exc:
        fail(console, str(exc))
    raise typer.Exit(asyncio.run(validator.run()))


def _api_of(config: Path | None, api: str | None) -> str:
    if api:
        return api
    if config is None:
        raise typer.BadParameter("give --config validator.toml or --api HOST:PORT")
    import tomllib

    return tomllib.loads(config.read_text())["validator"]["api"]


def _short(key: str | None) -> str:
    return f"{key[:12]}…" if key else "-"


@app.command()
def status(config: Path = typer.Option(None, "--config", "-c", help="validator.toml of the validator to ask."),
           api: str = typer.Option(None, help="Its API address instead: HOST:PORT or unix:/path."),
           as_json: bool = typer.Option(False, "--json", help="Print the status as one JSON object.")):
    """Height, validators, last commit and peers of a running validator."""
    from .client import LedgerClient

    address = _api_of(config, api)
    try:
        s = LedgerClient(address, timeout_s=5).status()
    except OSError as exc:
        fail(console, f"no validator answers at {address}: {exc}", code=1)
    if as_json:
        print(json.dumps(s, sort_keys=True))
        return
    c = s["consensus"]
    console.print(f"chain [bold]{s['chain_id']}[/]  validator {_short(s['validator'])}  height [bold]{s['height']}[/]"
                  f"  (round {c['round']}, {c['step']})  mempool {s['mempool_txs']}"
                  + (f"  [red]HALTED: {escape(str(s['halted']))}[/]" if s["halted"] else ""))
    last = s["last_commit"]
    if last:
        age_s = (time.time() * 1000 - last["time_ms"]) / 1000
        console.print(f"last commit: height {last['height']} round {last['round']} block {_short(last['block_hash'])}"
                      f"  {len(last['signers'])}/{len(s['validators'])} signers  {age_s:.1f} s ago")
    table = Table(title="validators")
    for col in ("key", "power", "signed last commit", "peer link"):
        table.add_column(col)
    peers = {p["key"]: p for p in s["peers"]}
    for key, power in s["validators"]:
        peer = peers.get(key)
        link = "self" if key == s["validator"] else (
            "blocked" if peer and peer["blocked"] else f"up {peer['up_s']} s" if peer and peer["connected"] else "down")
        table.add_row(_short(key), str(power), "yes" if last and key in last["signers"] else "no", link)
    console.print(table)
    rejected = {**s["rejections"], **{f"link:{k}": v for k, v in s["link_rejections"].items()}}
    if rejected:
        console.print("rejections: " + ", ".join(f"{k} {v}" for k, v in sorted(rejected.items())))


@app.command()
def testnet(out: Path = typer.Option(..., help="Directory to write genesis, keys and configs into."),
            validators: int = typer.Option(4, min=1, max=64),
            chain_id: str = typer.Option("gridhive-testnet"),
            clients: int = typer.Option(0, min=0, help="Funded member households c0… (keys in clients.keys)."),
            block_period_ms: int = typer.Option(1_000, min=1),
            empty_block_interval_ms: int = typer.Option(30_000, min=1),
            api: str = typer.Option("tcp", help="tcp (loopback port) or unix (socket in each validator dir).")):
    """Keys, genesis and one validator.toml per validator, all on loopback."""
    from .testnet import generate

    net = generate(out, validators, chain_id=chain_id, clients=clients, api=api,
                   consensus={"block_period_ms": block_period_ms, "empty_block_interval_ms": empty_block_interval_ms})
    for node in net.nodes:
        console.print(f"v{node.index} {_short(node.key)} p2p {node.p2p[0]}:{node.p2p[1]} api {node.api}"
                      f"\n   python -m gridhive.ledger run --config {node.config}")
