"""Home Assistant MQTT discovery: payloads checked against HA's documented schema, and behaviour.

The schema rules below are taken from Home Assistant's MQTT documentation (integrations/mqtt
"Discovery", sensor.mqtt, switch.mqtt) and the sensor integration's device-class tables
(homeassistant/components/sensor/const.py: DEVICE_CLASS_UNITS, DEVICE_CLASS_STATE_CLASSES).
"""
import json
import re

import pytest

from gwkit import Client, GatewayThread, NodeResponder, NodeSim, now_ms, wait, write_config
from gridhive.gateway.config import load_config
from gridhive.gateway.homeassistant import HomeAssistant

# <discovery_prefix>/<component>/[<node_id>/]<object_id>/config, ids of [a-zA-Z0-9_-].
TOPIC = re.compile(r"^homeassistant/(sensor|switch)/(?:[a-zA-Z0-9_-]+/)?([a-zA-Z0-9_-]+)/config$")
COMMON = {"availability", "availability_mode", "availability_template", "availability_topic", "device",
          "enabled_by_default", "encoding", "entity_category", "entity_picture", "icon",
          "json_attributes_template", "json_attributes_topic", "name", "default_entity_id", "object_id", "origin",
          "payload_available", "payload_not_available", "platform", "qos", "unique_id", "value_template",
          "state_topic"}
ALLOWED = {
    "sensor": COMMON | {"device_class", "expire_after", "force_update", "last_reset_value_template", "options",
                        "state_class", "suggested_display_precision", "unit_of_measurement"},
    "switch": COMMON | {"command_template", "command_topic", "device_class", "optimistic", "payload_off",
                        "payload_on", "retain", "state_off", "state_on"},
}
REQUIRED = {"sensor": {"state_topic"}, "switch": {"command_topic"}}
DEVICE_KEYS = {"configuration_url", "connections", "hw_version", "identifiers", "manufacturer", "model",
               "model_id", "name", "serial_number", "suggested_area", "sw_version", "via_device"}
ORIGIN_KEYS = {"name", "sw_version", "support_url"}
AVAILABILITY_KEYS = {"topic", "payload_available", "payload_not_available", "value_template"}
UNITS = {"power": {"mW", "W", "kW", "MW", "GW", "TW", "BTU/h"},
         "energy": {"J", "kJ", "MJ", "GJ", "mWh", "Wh", "kWh", "MWh", "GWh", "TWh", "cal", "kcal", "Mcal", "Gcal"}}
STATE_CLASSES = {"power": {"measurement"}, "energy": {"total", "total_increasing"}}
SWITCH_DEVICE_CLASSES = {"outlet", "switch"}


def check_discovery(topic: str, payload: dict) -> None:
    """Raise AssertionError unless (topic, payload) is a valid HA discovery config."""
    m = TOPIC.match(topic)
    assert m, f"bad discovery topic {topic}"
    component, object_id = m.groups()
    assert isinstance(payload, dict)
    unknown = set(payload) - ALLOWED[component]
    assert not unknown, f"{topic}: keys HA does not know: {unknown}"
    assert REQUIRED[component] <= set(payload), f"{topic}: missing {REQUIRED[component] - set(payload)}"
    assert isinstance(payload["unique_id"], str) and payload["unique_id"] == object_id
    assert isinstance(payload["name"], str) and payload["name"]
    assert payload.get("qos", 0) in (0, 1, 2)
    device = payload["device"]
    assert set(device) <= DEVICE_KEYS and device["identifiers"] and isinstance(device["identifiers"], list)
    assert set(payload["origin"]) <= ORIGIN_KEYS and payload["origin"]["name"]
    assert "availability_topic" not in payload or "availability" not in payload  # mutually exclusive
    for a in payload.get("availability", []):
        assert set(a) <= AVAILABILITY_KEYS and isinstance(a["topic"], str)
    assert payload.get("availability_mode", "latest") in ("all", "any", "latest")
    for key in ("state_topic", "command_topic"):
        if key in payload:
            assert isinstance(payload[key], str) and "+" not in payload[key] and "#" not in payload[key]
    if component == "sensor":
        dc = payload.get("device_class")
        if dc in UNITS:
            assert payload["unit_of_measurement"] in UNITS[dc], topic
            assert payload["state_class"] in STATE_CLASSES[dc], topic
    else:
        assert payload.get("device_class", "switch") in SWITCH_DEVICE_CLASSES
        for key in ("payload_on", "payload_off", "state_on", "state_off"):
            assert isinstance(payload.get(key, "x"), str)
        assert isinstance(payload.get("optimistic", False), bool)


def template_keys(payload: dict) -> set[str]:
    return set(re.findall(r"value_json\.(\w+)", payload["value_template"]))


def test_every_payload_matches_the_schema_and_its_state(tmp_path):
    cfg = load_config(write_config(tmp_path / "g.toml", broker_port=1883), env={})
    ha = HomeAssistant("gw1", "0.1.0")
    configs = ha.discovery("n1", cfg.registry.get("n1"), {0, 1}, {0}, node_fw="1.2.3")
    assert len(configs) == 7  # 2 channels x (power, import, export) + 1 relay
    for topic, payload in configs:
        check_discovery(topic, json.loads(json.dumps(payload)))
    assert len({p["unique_id"] for _, p in configs}) == 7
    by_uid = {p["unique_id"]: p for _, p in configs}
    power, energy = by_uid["gridhive_n1_ch0_power_w"], by_uid["gridhive_n1_ch0_energy_in_wh"]
    assert (power["device_class"], power["state_class"], power["unit_of_measurement"]) == ("power", "measurement", "W")
    assert (energy["device_class"], energy["state_class"], energy["unit_of_measurement"]) == \
        ("energy", "total_increasing", "Wh")
    assert power["name"] == "grid power" and by_uid["gridhive_n1_relay0"]["name"] == "ev relay"
    state = ha.state(NodeSim("n1").tele(now_ms(), relays_on=(True,))[2])
    for _, p in configs:
        assert template_keys(p) <= set(state)
    assert state["relay0"] == "ON" and state["ch0_power_w"] == 500


def test_the_checker_catches_what_home_assistant_would_refuse():
    ha = HomeAssistant("gw1", "0.1.0")
    topic, good = ha.discovery("n1", None, {0}, set())[1]
    for bad in ({**good, "state_class": "measurement"}, {**good, "unit_of_measurement": "A"},
                {**good, "colour": "red"}, {**good, "availability_mode": "most"}):
        with pytest.raises(AssertionError):
            check_discovery(topic, bad)
    with pytest.raises(AssertionError):
        check_discovery("homeassistant/sensor/bad.id/config", good)


@pytest.mark.broker
def test_discovery_is_republished_and_switches_reach_the_node(tmp_path, mosquitto):
    gwt = GatewayThread(write_config(tmp_path / "g.toml", broker_port=mosquitto.port)).start()
    try:
        n1 = NodeSim("n1", boot=5)
        node = Client(mosquitto.port, client_id="n1")
        node.publish(*n1.status()[:2], retain=True).wait_for_publish(5)
        node.publish(*n1.tele(now_ms())[:2]).wait_for_publish(5)
        ha = Client(mosquitto.port, client_id="ha")
        ha.subscribe("homeassistant/+/+/config")
        ha.subscribe("gridhive/#")
        wait(lambda: len(ha.messages("homeassistant/")) >= 11, 10, "discovery for both nodes")
        for topic, payload, retained in ha.messages("homeassistant/"):
            check_discovery(topic, json.loads(payload))
        first = len(ha.messages("homeassistant/"))
        ha.publish("homeassistant/status", b"online").wait_for_publish(5)  # HA restarted
        wait(lambda: len(ha.messages("homeassistant/")) >= 2 * first, 10, "republished discovery")

        state = wait(lambda: [json.loads(p) for t, p, _ in ha.messages("gridhive/gw1/n1/state")], 10, "state")
        assert state[-1]["relay0"] == "OFF"
        assert ("gridhive/gw1/n1/availability", b"online", False) in ha.messages("gridhive/gw1/n1/availability")
        responder = NodeResponder(mosquitto.port, n1)
        ha.publish("gridhive/gw1/n1/relay/0/set", b"ON").wait_for_publish(5)
        wait(lambda: responder.commands, 10, "the node's cmd")
        assert {k: responder.commands[0][k] for k in ("boot", "relay", "action")} == {"boot": 5, "relay": 0,
                                                                                    "action": "on"}
        wait(lambda: any(json.loads(p).get("relay0") == "ON" for _, p, _ in ha.messages("gridhive/gw1/n1/state")),
             10, "the switch state from the node's reply")
    finally:
        gwt.stop()
