"""Fixtures every suite reuses: a real Mosquitto broker and a real MicroPython runtime."""
import sys

import pytest

from gridhive.broker import MosquittoBroker
from gridhive.micropython import DEVICE_DIR, MicroPython

# device/ holds boot-time modules (appdir) that live in the board's /lib, outside the ghnode package.
sys.path.insert(0, str(DEVICE_DIR))


@pytest.fixture
def mosquitto(tmp_path):
    broker = MosquittoBroker(tmp_path)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def micropython():
    return MicroPython()
