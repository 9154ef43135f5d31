"""Fixtures for the ledger suites."""
import pytest

from ledger_world import World


@pytest.fixture
def world():
    return World()
