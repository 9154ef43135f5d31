"""The device test modules in tests/device/ run unchanged under real MicroPython (WebAssembly port).

pytest also collects the same modules on CPython, so every device test runs on both interpreters.
"""
from pathlib import Path

import pytest

from gridhive.micropython import DEVICE_DIR

DEVICE_TESTS_DIR = Path(__file__).resolve().parent / "device"

DEVICE_TEST_MODULES = sorted(p.stem for p in DEVICE_TESTS_DIR.glob("test_*.py"))


@pytest.mark.micropython
@pytest.mark.parametrize("module", DEVICE_TEST_MODULES)
def test_device_module_passes_under_micropython(micropython, module):
    results, summary, output = micropython.run_tests(module, libs=(DEVICE_DIR, DEVICE_TESTS_DIR))
    failed = [r for r in results if not r["ok"]]
    assert summary is not None, f"{module} did not finish under MicroPython:\n{output}"
    assert not failed, f"{module} failed under MicroPython: {failed}\n{output}"
    assert summary["passed"] > 0
