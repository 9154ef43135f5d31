"""Fixtures of the gateway tests."""
import pytest

from gwkit import GatewayThread, write_config


@pytest.fixture
def gateway(tmp_path, mosquitto):
    """A gateway in-process on the session's Mosquitto, with the default test config."""
    gwt = GatewayThread(write_config(tmp_path / "g.toml", broker_port=mosquitto.port)).start()
    yield gwt
    gwt.stop()
