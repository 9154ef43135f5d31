"""Benchmarks for `gridhive bench NAME`: module paths, imported lazily; each module has run() -> dict."""

BENCHES = {
    "device": "gridhive.bench.device",
    "clearing": "gridhive.market.bench",
    "ctl-ingest": "gridhive.controller.bench",
    "ingest": "gridhive.bench.ingest",
    "ingest-path": "gridhive.bench.ingest_path",
    "ledger": "gridhive.ledger.bench",
    "ledger-path": "gridhive.ledger.pathbench",
    "forecast": "gridhive.forecast.bench",
}
