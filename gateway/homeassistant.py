"""Home Assistant MQTT discovery for the gateway's nodes (payload builders, no I/O).

Each node becomes one HA device with, per CT channel, a power sensor (W, `measurement`) and
import/export energy sensors (Wh, `total_increasing`: usable in HA's energy dashboard), and a
switch per relay. Discovery configs go to `<discovery_prefix>/<component>/<unique_id>/config`
(retained, and republished whenever HA announces `online` on `<discovery_prefix>/status`).

State flows on the gateway's own topics (node messages are signed and per-node; HA reads plain
JSON): `<state_prefix>/<gw>/<node>/state` carries flat keys such as `ch0_power_w` and `relay0`
("ON"/"OFF"). A switch's command topic `<state_prefix>/<gw>/<node>/relay/<n>/set` is bridged by
the gateway into a signed `cmd` for the node. Entities are available while both the gateway (its
MQTT last will) and the node (its status) are online.
"""
from __future__ import annotations

from .config import NodeEntry

ON, OFF = "ON", "OFF"
ONLINE, OFFLINE = "online", "offline"


class HomeAssistant:
    def __init__(self, gateway_id: str, fw: str, discovery_prefix: str = "homeassistant",
                 state_prefix: str = "gridhive"):
        self.gateway_id, self.fw = gateway_id, fw
        self.discovery_prefix = discovery_prefix
        self.base = f"{state_prefix}/{gateway_id}"

    # --- topics --------------------------------------------------------------------------------

    @property
    def birth_topic(self) -> str:
        return f"{self.discovery_prefix}/status"

    @property
    def gateway_availability_topic(self) -> str:
        return f"{self.base}/availability"

    @property
    def command_filter(self) -> str:
        return f"{self.base}/+/relay/+/set"

    def availability_topic(self, node: str) -> str:
        return f"{self.base}/{node}/availability"

    def state_topic(self, node: str) -> str:
        return f"{self.base}/{node}/state"

    def command_topic(self, node: str, relay: int) -> str:
        return f"{self.base}/{node}/relay/{relay}/set"

    def parse_command(self, topic: str, payload: bytes) -> tuple[str, int, str] | None:
        """(node, relay, "on"|"off") for a switch command from HA, else None."""
        prefix = self.base + "/"
        if not topic.startswith(prefix):
            return None
        parts = topic[len(prefix):].split("/")
        if len(parts) != 4 or parts[1] != "relay" or parts[3] != "set" or not parts[2].isdigit():
            return None
        action = {ON: "on", OFF: "off"}.get(payload.decode("ascii", "replace").strip())
        return (parts[0], int(parts[2]), action) if action else None

    # --- discovery ---------------------------------------------------------------------------

    def discovery(self, node: str, entry: NodeEntry | None, channels, relays,
                  node_fw: str | None = None) -> list[tuple[str, dict]]:
        """(config topic, payload) for every entity of one node."""
        device = {
            "identifiers": [f"gridhive_{node}"],
            "name": f"gridhive {node}",
            "manufacturer": "gridhive",
            "model": "ESP32 energy node",
        }
        if node_fw:
            device["sw_version"] = node_fw
        common = {
            "device": device,
            "origin": {"name": "gridhive gateway", "sw_version": self.fw},
            "availability": [{"topic": self.gateway_availability_topic},
                             {"topic": self.availability_topic(node)}],
            "availability_mode": "all",
            "state_topic": self.state_topic(node),
        }
        out = []
        for n in sorted(channels):
            circuit = entry.channel_name(n) if entry else f"ch{n}"
            for key, label, dev_class, state_class, unit in (
                    ("power_w", "power", "power", "measurement", "W"),
                    ("energy_in_wh", "energy import", "energy", "total_increasing", "Wh"),
                    ("energy_out_wh", "energy export", "energy", "total_increasing", "Wh")):
                uid = f"gridhive_{node}_ch{n}_{key}"
                out.append((f"{self.discovery_prefix}/sensor/{uid}/config", {
                    **common, "name": f"{circuit} {label}", "unique_id": uid,
                    "device_class": dev_class, "state_class": state_class, "unit_of_measurement": unit,
                    "value_template": f"{{{{ value_json.ch{n}_{key} }}}}",
                }))
        for n in sorted(relays):
            relay = entry.relays[n].name if entry and n in entry.relays else f"relay{n}"
            uid = f"gridhive_{node}_relay{n}"
            out.append((f"{self.discovery_prefix}/switch/{uid}/config", {
                **common, "name": f"{relay} relay", "unique_id": uid,
                "command_topic": self.command_topic(node, n),
                "value_template": f"{{{{ value_json.relay{n} }}}}",
                "payload_on": ON, "payload_off": OFF, "state_on": ON, "state_off": OFF,
                "optimistic": False, "qos": 1,
            }))
        return out

    @staticmethod
    def state(tele: dict) -> dict:
        """Flat state for the value templates, from a node's `tele` message."""
        state = {}
        for ch in tele["ch"]:
            n = ch["n"]
            for key in ("power_w", "energy_in_wh", "energy_out_wh"):
                if ch.get(key) is not None:
                    state[f"ch{n}_{key}"] = ch[key]
        for relay in tele["relays"]:
            state[f"relay{relay['n']}"] = ON if relay["on"] else OFF
        return state
