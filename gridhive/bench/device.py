"""`gridhive bench device`: the node's sampling loop measured under real MicroPython.

Runs gridhive/bench/mpy/device_bench.py in the MicroPython WebAssembly port (node tools/mpyrun.mjs)
with device/ on its path. Figures are for that bytecode interpreter; the ESP32 build compiles
ghnode/sampler.py with the native emitter and its read_uv is C, so a board is faster per sample.
"""
import json
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MPY_DIR = Path(__file__).resolve().parent / "mpy"


def run(samples: int = 2000, channels: int = 4) -> dict:
    """Figures: us_per_sample (one ADC read, loop included), loop_alloc_bytes (0 = allocation-free),
    samples_per_s_per_channel, channels, heap_lock_ok, analyse_ms_per_window and more."""
    node = shutil.which("node")
    if not node or not (ROOT / "node_modules" / "@micropython").exists():
        raise RuntimeError("needs node and the MicroPython runtime: run `npm ci` in the repository root")
    cmd = [node, str(ROOT / "tools" / "mpyrun.mjs"), "--lib", str(ROOT / "device"), "--lib", str(MPY_DIR),
           "--run", "device_bench", json.dumps({"samples": samples, "channels": channels})]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"device benchmark failed under MicroPython:\n{out.stdout}\n{out.stderr}")
    figures = json.loads(lines[-1])
    first = ("us_per_sample", "loop_alloc_bytes", "samples_per_s_per_channel", "channels")
    return {**{k: figures[k] for k in first}, **{k: v for k, v in sorted(figures.items()) if k not in first}}
