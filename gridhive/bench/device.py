"""`gridhive bench device`: the node's sampling loop measured under real MicroPython.

Runs gridhive/bench/mpy/device_bench.py in the MicroPython WebAssembly port (node tools/mpyrun.mjs)
with device/ on its path. Figures are for that bytecode interpreter; the ESP32 build compiles
ghnode/sampler.py with the native emitter and its read_uv is C, so a board is faster per sample.
"""
import json
from pathlib import Path

from gridhive.micropython import DEVICE_DIR, MicroPython

MPY_DIR = Path(__file__).resolve().parent / "mpy"


def run(samples: int = 2000, channels: int = 4) -> dict:
    """Figures: us_per_sample (one ADC read, loop included), loop_alloc_bytes (0 = allocation-free),
    samples_per_s_per_channel, channels, heap_lock_ok, analyse_ms_per_window and more."""
    out = MicroPython().run("device_bench", {"samples": samples, "channels": channels},
                            libs=(DEVICE_DIR, MPY_DIR), timeout_s=600)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"the device benchmark printed no figures under MicroPython:\n{out}")
    figures = json.loads(lines[-1])
    first = ("us_per_sample", "loop_alloc_bytes", "samples_per_s_per_channel", "channels")
    return {**{k: figures[k] for k in first}, **{k: v for k, v in sorted(figures.items()) if k not in first}}
