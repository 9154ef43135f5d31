"""Benchmarks for `gridhive bench NAME`: module paths, imported lazily; each module has run() -> dict."""
import time

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


class StepClock:
    """The process CPU time a path benchmark spends on each named step of its path."""

    def __init__(self, steps: tuple[str, ...]):
        self.steps = steps
        self.spent_s = dict.fromkeys(steps, 0.0)

    def timed(self, step: str, fn):
        start = time.process_time()
        result = fn()
        self.spent_s[step] += time.process_time() - start
        return result

    def us_per(self, units: int, total_of: tuple[str, ...]) -> dict:
        """`<step>_us` for every step and `total_us` of the steps in total_of: µs per unit."""
        figures = {f"{step}_us": round(s / units * 1e6, 1) for step, s in self.spent_s.items()}
        figures["total_us"] = round(sum(self.spent_s[step] for step in total_of) / units * 1e6, 1)
        return figures
