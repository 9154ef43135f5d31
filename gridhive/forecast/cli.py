"""`gridhive forecast ...`: rebuild the shipped model, and score it on the held-out set."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from .dataset import DEFAULT_HOUSEHOLDS, DEFAULT_SEED
from .runtime import DEFAULT_MODEL_PATH
from .samples import HELDOUT_PATH

app = typer.Typer(help="Household load and PV forecasting (LiteRT model on the gateway).",
                  no_args_is_help=True)
console = Console()


def _table(report: dict) -> Table:
    t = Table(title=f"held-out: {report['households']} households, {report['days']} days")
    for col in ("series", "MAE W", "RMSE W", "R²", "naive MAE W", "skill %", "p10-p90"):
        t.add_column(col, justify="right")
    for name, label in (("load", "load"), ("pv", "pv"),
                        ("pv_no_weather_forecast", "pv, no weather fc")):
        r = report[name]
        t.add_row(label, f"{r['mae_w']:.1f}", f"{r['rmse_w']:.1f}", f"{r['r2']:.3f}",
                  f"{r['naive']['mae_w']:.1f}", f"{r['mae_skill_pct']:.1f}",
                  f"{r['p10_p90_coverage']:.2f}")
    return t


@app.command()
def train(
    households: int = typer.Option(DEFAULT_HOUSEHOLDS, min=15,
                                   help="Simulated households (5+ per site for every split)."),
    seed: int = typer.Option(DEFAULT_SEED, help="Dataset seed: the same seed gives the same data."),
    epochs: int = typer.Option(30, min=1, help="Most epochs (early stopping on validation)."),
    hidden: int = typer.Option(64, min=4, help="Units per hidden layer."),
    threads: int = typer.Option(1, min=1, help="TensorFlow threads (the build machine is shared)."),
    cache_dir: Path = typer.Option(None, help="Dataset cache [default: var/cache/forecast]."),
    out: Path = typer.Option(DEFAULT_MODEL_PATH, help="Where to write the .tflite (+ .json)."),
    heldout: Path = typer.Option(HELDOUT_PATH, help="Where to write the held-out set."),
):
    """Build the dataset (cached), train, convert to .tflite and report on held-out data."""
    if importlib.util.find_spec("tensorflow") is None:
        console.print("[red]training needs TensorFlow:[/] pip install -e '.[train]'")
        raise typer.Exit(2)
    from .train import train as run_train
    report = run_train(out, heldout, households, seed, epochs, hidden, threads=threads,
                       cache_dir=cache_dir, log=console.print)
    console.print(_table(report))


@app.command()
def evaluate(
    model: Path = typer.Option(DEFAULT_MODEL_PATH, help="The .tflite to score."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
):
    """Score a model on the shipped held-out set (held-out homes in held-out weeks)."""
    from .evaluate import heldout_report
    from .runtime import LiteModel
    report = heldout_report(LiteModel(model))
    if as_json:
        print(json.dumps(report))
    else:
        console.print(_table(report))
        console.print("with online correction, MAE W:",
                      {k: v["mae_w"] for k, v in report["corrected"].items()})
        console.print("intraday, next-hour MAE W:", report["intraday_next_hour"])
