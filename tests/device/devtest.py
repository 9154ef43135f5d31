"""Helpers for device tests that run unchanged on CPython (pytest) and on MicroPython (tools/mpyrun.mjs).

Only modules the MicroPython WebAssembly port has may be used here and in tests/device/.
"""
import os
import sys

IS_MICROPYTHON = sys.implementation.name == "micropython"
_counter = [0]


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def make_tmpdir(prefix="t"):
    """A new empty directory (MicroPython's VFS has no tempfile module)."""
    if IS_MICROPYTHON:
        base = "/tmp"
    else:
        import tempfile
        base = tempfile.gettempdir()
    while True:
        _counter[0] += 1
        path = "%s/gh-%s-%d-%d" % (base, prefix, os.getpid() if hasattr(os, "getpid") else 0, _counter[0])
        if not _exists(path):
            os.mkdir(path)
            return path


def raises(exc_type, fn, *args, **kwargs):
    """Assert fn(*args, **kwargs) raises exc_type; return the exception."""
    try:
        fn(*args, **kwargs)
    except exc_type as e:
        return e
    raise AssertionError("expected %s" % exc_type.__name__)
