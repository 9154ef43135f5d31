"""gateway.toml: read with tomllib, validated at start-up, overridable from the environment.

Every problem raises ConfigError naming the dotted key (`uplink.port: expected an integer
1-65535, got 70000`), so a gateway with a bad config fails at once and says why. Unknown keys are
errors that list the valid ones: a typo such as `uplink.prot` is never silently ignored.

Environment variables override scalar keys for containers: GRIDHIVE_GATEWAY__UPLINK__PORT=8884
sets `uplink.port`. The value is read as a TOML value when it parses as one (8884, true, "x"),
else taken as a plain string. An error in an overridden key names the variable.

Under systemd with StateDirectory= (the unit `gridhive gateway systemd-unit` prints),
`gateway.data_dir` defaults to that folder ($STATE_DIRECTORY) instead of the config's folder,
which that unit's ProtectSystem=strict makes read-only.

The node registry (node id -> secret, household, circuits, relays) lives under `[nodes.<id>]`,
either in gateway.toml or in the file named by `gateway.registry_file`.
"""
from __future__ import annotations

import difflib
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from gridhive.mqtt_security import TlsSetupError, tls_context

ENV_PREFIX = "GRIDHIVE_GATEWAY__"
NODE_ID = re.compile(r"^[a-z0-9-]{1,32}$")
GATEWAY_ID = re.compile(r"^[a-z0-9-]{1,32}$")
CIRCUIT_NAME = re.compile(r"^[a-z0-9_-]{1,24}$")
MAX_CHANNELS = 8
MAX_RELAYS = 8
# Broker user names the ACL gives wider rights; a node must not be able to take one of them.
RESERVED_USERS = ("gateway", "homeassistant")


class ConfigError(ValueError):
    """A config problem. `key` is the dotted path of the bad key, or None for the whole file."""

    def __init__(self, key: str | None, message: str):
        super().__init__(f"{key}: {message}" if key else message)
        self.key, self.message = key, message


# --- the declarative schema -----------------------------------------------------------------

REQUIRED = object()


@dataclass(frozen=True)
class Key:
    kind: str  # "int", "float", "bool", "str", "path"
    default: Any = REQUIRED
    lo: float | None = None
    hi: float | None = None
    choices: tuple = ()
    pattern: re.Pattern | None = None
    nullable: bool = False


def _int(default=REQUIRED, lo=None, hi=None):
    return Key("int", default, lo, hi)


def _str(default=REQUIRED, choices=(), pattern=None, nullable=False):
    return Key("str", default, choices=choices, pattern=pattern, nullable=nullable)


def _path(default=None):
    return Key("path", default, nullable=True)


def _bool(default):
    return Key("bool", default)


SECTIONS: dict[str, dict[str, Key]] = {
    "gateway": {
        "id": _str(pattern=GATEWAY_ID),
        "data_dir": Key("path", "."),
        "registry_file": _path(),
        "log_level": _str("INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
    },
    # The local Mosquitto the nodes talk to.
    "broker": {
        "host": _str("127.0.0.1"),
        "port": _int(1883, 1, 65535),
        "user": _str("gateway", pattern=re.compile(r"^[A-Za-z0-9_-]{1,64}$")),
        "password": _str("", nullable=True),
        "client_id": _str("", nullable=True),
        "keepalive_s": _int(30, 5, 3600),
        # "3.1.1" for brokers without MQTT 5 (the demo's amqtt): no manual acks, so a crashed
        # gateway's unstored messages come back from the nodes' flash instead of the broker.
        "mqtt_version": _str("5", choices=("5", "3.1.1")),
        # What `mosquitto-config` writes for the broker itself.
        "listen_host": _str("0.0.0.0"),
        "tls_port": _int(8883, 1, 65535),
        "tls_cert_file": _path(),
        "tls_key_file": _path(),
        "tls_ca_file": _path(),
        "max_queued_messages": _int(100000, 100, 10_000_000),
    },
    "ingest": {
        "ack_batch_ms": _int(100, 5, 5000),
        "commit_max_messages": _int(2000, 1, 100000),
        "max_future_ms": _int(300_000, 0, 86_400_000),
        "max_power_w": _int(100_000, 1, 10_000_000),
        "line_voltage_v": _int(400, 1, 1000),
        "rating_factor": Key("float", 1.5, 1.0, 10.0),
        "reject_log_interval_s": _int(60, 1, 86400),
    },
    "storage": {
        "path": _path(),  # default: <gateway.data_dir>/gateway.sqlite3
        "raw_retention_days": _int(7, 1, 3650),
        "minute_retention_days": _int(90, 1, 3650),
        "interval_retention_days": _int(0, 0, 36500),  # 0 = keep forever
        # The settlement interval: divides an hour (aligned to it, UTC). Short ones for demos and tests.
        "interval_s": Key("int", 900, choices=tuple(s for s in range(10, 3601) if 3600 % s == 0)),
        "synchronous": _str("FULL", choices=("FULL", "NORMAL")),
        "prune_interval_s": _int(3600, 1, 86400),
    },
    "uplink": {
        "enabled": _bool(True),
        "host": _str("127.0.0.1"),
        "port": _int(8883, 1, 65535),
        "tls": _bool(True),
        "tls_insecure": _bool(False),  # skip only the host-name check; the chain is always verified
        "ca_file": _path(),
        "cert_file": _path(),
        "key_file": _path(),
        "user": _str("", nullable=True),
        "password": _str("", nullable=True),
        "keepalive_s": _int(30, 5, 3600),
        "batch_items": _int(100, 1, 100),
        "max_inflight_batches": _int(16, 1, 1000),
        "retry_s": _int(10, 1, 3600),
        "status_interval_s": _int(60, 1, 86400),
    },
    "http": {
        "enabled": _bool(True),
        "host": _str("127.0.0.1"),
        "port": _int(8080, 0, 65535),  # 0 = any free port (tests)
    },
    "commands": {
        "timeout_s": Key("float", 10.0, 0.1, 600.0),
    },
    "homeassistant": {
        "enabled": _bool(True),
        "discovery_prefix": _str("homeassistant", pattern=re.compile(r"^[A-Za-z0-9_-]{1,64}$")),
        "state_prefix": _str("gridhive", pattern=re.compile(r"^[A-Za-z0-9_-]{1,64}$")),
        "user": _str("homeassistant", pattern=re.compile(r"^[A-Za-z0-9_-]{1,64}$")),
        "password": _str("", nullable=True),
    },
    # The ledger agent (`gridhive gateway agent`): attests the households' interval energies and
    # enters their orders through this gateway's validator (docs/GATEWAY.md, "Ledger agent").
    "ledger": {
        "api": _str("", nullable=True),       # the validator's local API: HOST:PORT or unix:/path
        "genesis": _path(),                   # the chain's genesis.json (chain id, market params)
        "key_file": _path(),                  # this gateway's ledger key (hex seed): signs attestations
        "attest_delay_s": _int(60, 0, 3600),  # after an interval ends: late node messages arrive first
        "history_intervals": _int(4, 1, 96),  # metered intervals the next order is forecast from
        "tick_s": Key("float", 5.0, 0.1, 600.0),
    },
    "gpio": {
        "enabled": _bool(False),
        "led_pin": _int(17, 0, 53),
        "button_pin": _int(27, 0, 53),
        "pin_factory": _str("", choices=("", "mock")),
    },
}

# Sections that are off unless present. [meter]: the household's utility meter over Modbus
# (docs/GATEWAY.md, "Utility meter").
METER_KEYS: dict[str, Key] = {
    "enabled": _bool(True),
    "kind": _str(choices=("sdm120", "sdm630", "sunspec")),
    "household": _str(pattern=re.compile(r"^[A-Za-z0-9_-]{1,64}$")),  # whose grid connection it meters
    "transport": _str(choices=("tcp", "rtu")),
    "host": _str(None, nullable=True),         # tcp
    "port": _int(502, 1, 65535),
    "serial_port": _str(None, nullable=True),  # rtu: e.g. /dev/ttyUSB0 (it may appear after start-up)
    "baudrate": Key("int", 9600, choices=(1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)),
    "parity": _str("N", choices=("N", "E", "O")),
    "stopbits": Key("int", 1, choices=(1, 2)),
    "device_id": _int(1, 1, 247),
    "period_s": Key("float", 10.0, 0.5, 900.0),
    "timeout_s": Key("float", 1.0, 0.05, 30.0),
    "retries": _int(3, 0, 10),
    "retry_base_s": Key("float", 0.2, 0.0, 60.0),
    "retry_cap_s": Key("float", 2.0, 0.0, 60.0),
    "max_bracket_s": _int(300, 1, 3600),       # interpolate an interval boundary across at most this
    "circuits_wait_s": _int(300, 0, 86400),    # then check even if a node's readings are missing
    "tolerance_wh": _int(20, 0, 10_000_000),   # a discrepancy over max(tolerance_wh, tolerance_pct)
    "tolerance_pct": Key("float", 5.0, 0.0, 100.0),  # ... is logged and marked
}
OPTIONAL_SECTIONS: dict[str, dict[str, Key]] = {"meter": METER_KEYS}

NODE_KEYS: dict[str, Key] = {
    "secret_hex": _str(pattern=re.compile(r"^[0-9a-fA-F]{64}$")),
    "household": _str(pattern=re.compile(r"^[A-Za-z0-9_-]{1,64}$")),
    "mqtt_password": _str(None, nullable=True),
    "member_key_file": _path(),  # the household's ledger key, if its agent runs on this gateway
}
CHANNEL_KEYS: dict[str, Key] = {
    "n": _int(lo=0, hi=MAX_CHANNELS - 1),
    "name": _str(pattern=CIRCUIT_NAME),
    "rating_a": Key("float", None, 0.1, 1000.0, nullable=True),
    "grid": _bool(False),
}
RELAY_KEYS: dict[str, Key] = {
    "n": _int(lo=0, hi=MAX_RELAYS - 1),
    "name": _str(pattern=CIRCUIT_NAME),
}


def _describe(spec: Key) -> str:
    if spec.choices:
        return "one of " + ", ".join(repr(c) for c in spec.choices)
    what = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
            "path": "a path string"}[spec.kind]
    if spec.lo is not None and spec.hi is not None:
        what += f" {spec.lo:g}-{spec.hi:g}"
    elif spec.lo is not None:
        what += f" >= {spec.lo:g}"
    if spec.pattern is not None:
        what += f" matching {spec.pattern.pattern}"
    return what


def _shown(value: Any) -> str:
    """A value as the user wrote it: TOML's true/false, not Python's True/False."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _check(key: str, spec: Key, value: Any, base_dir: Path) -> Any:
    if value is None and spec.nullable:
        return None
    bad = ConfigError(key, f"expected {_describe(spec)}, got {_shown(value)}")
    if spec.kind == "int":
        # TOML gives real ints; reject true/false and 1.0, which Python would treat as ints.
        if not isinstance(value, int) or isinstance(value, bool):
            raise bad
    elif spec.kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        value = float(value)
    elif spec.kind == "bool":
        if not isinstance(value, bool):
            raise bad
    elif not isinstance(value, str):
        raise bad
    if spec.choices and value not in spec.choices:
        raise bad
    if spec.lo is not None and value < spec.lo or spec.hi is not None and value > spec.hi:
        raise bad
    if spec.pattern is not None and not spec.pattern.match(value):
        raise bad
    if spec.kind == "path":
        path = Path(value).expanduser()
        return path if path.is_absolute() else (base_dir / path)
    return value


def _table(key: str, raw: Any, specs: Mapping[str, Key], base_dir: Path) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(key, f"expected a table, got {_shown(raw)}")
    unknown = sorted(set(raw) - set(specs))
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}" if key else unknown[0],
                          "unknown key; valid keys: " + ", ".join(sorted(specs)))
    out = {}
    for name, spec in specs.items():
        dotted = f"{key}.{name}" if key else name
        if name not in raw:
            if spec.default is REQUIRED:
                raise ConfigError(dotted, "missing (required)")
            out[name] = _check(dotted, spec, spec.default, base_dir) if spec.default is not None else None
        else:
            out[name] = _check(dotted, spec, raw[name], base_dir)
    return out


# --- the typed result -------------------------------------------------------------------------

@dataclass(frozen=True)
class Channel:
    n: int
    name: str
    rating_a: float | None = None
    grid: bool = False  # this CT measures the household's grid connection point


@dataclass(frozen=True)
class Relay:
    n: int
    name: str


@dataclass(frozen=True)
class NodeEntry:
    node_id: str
    secret: bytes
    household: str
    channels: Mapping[int, Channel] = field(default_factory=dict)
    relays: Mapping[int, Relay] = field(default_factory=dict)
    mqtt_password: str | None = None
    member_key_file: Path | None = None

    def channel_name(self, n: int) -> str:
        ch = self.channels.get(n)
        return ch.name if ch else f"ch{n}"


class Registry:
    """The nodes this gateway serves: node id -> NodeEntry."""

    def __init__(self, nodes: Mapping[str, NodeEntry]):
        self._nodes = dict(nodes)

    def __contains__(self, node_id: str) -> bool:
        return node_id in self._nodes

    def __iter__(self):
        return iter(self._nodes.values())

    def __len__(self) -> int:
        return len(self._nodes)

    def get(self, node_id: str) -> NodeEntry | None:
        return self._nodes.get(node_id)

    def secret_for(self, node_id: str) -> bytes | None:
        entry = self._nodes.get(node_id)
        return entry.secret if entry else None

    def households(self) -> dict[str, list[NodeEntry]]:
        out: dict[str, list[NodeEntry]] = {}
        for entry in self._nodes.values():
            out.setdefault(entry.household, []).append(entry)
        return out


@dataclass(frozen=True)
class Section:
    """A validated config section; keys are attributes (`cfg.uplink.port`)."""
    values: Mapping[str, Any]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass(frozen=True)
class GatewayConfig:
    source: Path | None
    gateway: Section
    broker: Section
    ingest: Section
    storage: Section
    uplink: Section
    http: Section
    commands: Section
    homeassistant: Section
    ledger: Section
    gpio: Section
    registry: Registry
    meter: Section | None = None  # None: no [meter], or enabled = false

    @property
    def gateway_id(self) -> str:
        return self.gateway.id

    @property
    def db_path(self) -> Path:
        return self.storage.path or self.gateway.data_dir / "gateway.sqlite3"


# --- loading ------------------------------------------------------------------------------------

def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _unknown_override(name: str, schemas: Mapping[str, Mapping[str, Key]]) -> ConfigError:
    """The closest valid variables, not all ~90 of them."""
    valid = [f"{s.upper()}__{k.upper()}" for s in schemas for k in schemas[s]]
    close = difflib.get_close_matches(name[len(ENV_PREFIX):], valid, n=3)
    if close:
        hint = "the closest valid: " + ", ".join(ENV_PREFIX + c for c in close)
    else:
        hint = (f"the form is {ENV_PREFIX}<SECTION>__<KEY> with a key of docs/GATEWAY.md; sections: "
                + ", ".join(s.upper() for s in schemas))
    return ConfigError(name, f"unknown override; {hint}")


def apply_env(raw: dict, env: Mapping[str, str]) -> tuple[dict, dict[str, str]]:
    """Overlay GRIDHIVE_GATEWAY__SECTION__KEY variables on the parsed TOML (a copy). Also returns
    which variable set each dotted key, so an error in its value can name the variable."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    sources: dict[str, str] = {}
    schemas = {**SECTIONS, **OPTIONAL_SECTIONS}
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX):].lower().split("__")
        if len(parts) != 2 or parts[0] not in schemas or parts[1] not in schemas[parts[0]]:
            raise _unknown_override(name, schemas)
        section = out.setdefault(parts[0], {})
        if not isinstance(section, dict):
            raise ConfigError(parts[0], f"expected a table, got {_shown(section)}")
        section[parts[1]] = _parse_env_value(env[name])
        sources[".".join(parts)] = name
    return out, sources


def _read_toml(path: Path, key: str | None = None) -> dict:
    """Parse a TOML file. Errors name the path; `key` is the setting that named the file (None:
    the config itself, whose errors are about the whole file)."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        problem = f"no such file {path}" if key else f"no config at {path}: write one (see docs/GATEWAY.md)"
    except IsADirectoryError:
        problem = f"{path} is a folder, not a config file: give the path of the .toml file"
    except OSError as e:  # permission denied, an I/O error
        problem = f"cannot read {path} ({e.strerror}): check that this user may read it"
    except UnicodeDecodeError as e:
        problem = (f"{path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}): "
                   "TOML files are UTF-8; save it as UTF-8")
    except tomllib.TOMLDecodeError as e:
        problem = f"{path} is not valid TOML ({e})"
    raise ConfigError(key, problem)


def _items(key: str, raw: Any, specs: Mapping[str, Key], limit: int, base_dir: Path) -> list[dict]:
    if not isinstance(raw, list) or len(raw) > limit:
        raise ConfigError(key, f"expected a list of at most {limit} tables, got {raw!r}")
    rows = [_table(f"{key}[{i}]", item, specs, base_dir) for i, item in enumerate(raw)]
    for field_name in ("n", "name"):
        seen: set = set()
        for i, row in enumerate(rows):
            if row[field_name] in seen:
                raise ConfigError(f"{key}[{i}].{field_name}", f"duplicate value {row[field_name]!r}")
            seen.add(row[field_name])
    return rows


def parse_registry(raw_nodes: Any, base_dir: Path, key: str = "nodes") -> Registry:
    if not isinstance(raw_nodes, dict):
        raise ConfigError(key, f"expected a table of [nodes.<id>] tables, got {raw_nodes!r}")
    nodes = {}
    for node_id, raw in raw_nodes.items():
        where = f"{key}.{node_id}"
        if not NODE_ID.match(node_id):
            raise ConfigError(where, "node ids are 1-32 of a-z 0-9 -")
        if node_id in RESERVED_USERS:
            raise ConfigError(where, f"{node_id!r} is reserved for a broker user")
        if not isinstance(raw, dict):
            raise ConfigError(where, f"expected a table, got {_shown(raw)}")
        body = {k: v for k, v in raw.items() if k not in ("channels", "relays")}
        values = _table(where, body, NODE_KEYS, base_dir)
        secret = bytes.fromhex(values["secret_hex"])
        if not any(secret):
            raise ConfigError(f"{where}.secret_hex", "must not be all zero")
        channels = _items(f"{where}.channels", raw.get("channels", []), CHANNEL_KEYS, MAX_CHANNELS, base_dir)
        relays = _items(f"{where}.relays", raw.get("relays", []), RELAY_KEYS, MAX_RELAYS, base_dir)
        nodes[node_id] = NodeEntry(
            node_id=node_id, secret=secret, household=values["household"],
            channels={c["n"]: Channel(**c) for c in channels},
            relays={r["n"]: Relay(**r) for r in relays},
            mqtt_password=values["mqtt_password"], member_key_file=values["member_key_file"])
    return Registry(nodes)


def parse_config(raw: dict, base_dir: Path, source: Path | None = None,
                 env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Validate an already-parsed TOML document (plus env overrides) into a GatewayConfig."""
    env = os.environ if env is None else env
    raw, from_env = apply_env(raw, env)
    state_dir = env.get("STATE_DIRECTORY")  # set by systemd's StateDirectory= (see the module doc)
    if state_dir and isinstance(raw.get("gateway"), dict) and "data_dir" not in raw["gateway"]:
        raw["gateway"]["data_dir"] = state_dir.split(":")[0]
    try:
        return _validate(raw, base_dir, source)
    except ConfigError as e:
        if e.key in from_env:  # the bad value is the variable's, not the file's
            raise ConfigError(e.key, f"{e.message} (set by {from_env[e.key]})") from None
        raise


def _validate(raw: dict, base_dir: Path, source: Path | None) -> GatewayConfig:
    unknown = sorted(set(raw) - set(SECTIONS) - set(OPTIONAL_SECTIONS) - {"nodes"})
    if unknown:
        raise ConfigError(unknown[0], "unknown section; valid sections: "
                          + ", ".join([*SECTIONS, *OPTIONAL_SECTIONS, "nodes"]))
    sections = {name: Section(_table(name, raw.get(name, {}), specs, base_dir))
                for name, specs in SECTIONS.items()}
    registry_file = sections["gateway"].registry_file
    if registry_file is not None:
        if "nodes" in raw:
            raise ConfigError("nodes", "nodes are listed both here and in gateway.registry_file; keep one")
        reg_raw = _read_toml(registry_file, key="gateway.registry_file")
        extra = sorted(set(reg_raw) - {"nodes"})
        if extra:
            raise ConfigError(f"{registry_file}: {extra[0]}", "a registry file holds only [nodes.<id>] tables")
        registry = parse_registry(reg_raw.get("nodes", {}), registry_file.parent, key=f"{registry_file.name}: nodes")
    else:
        registry = parse_registry(raw.get("nodes", {}), base_dir)
    uplink = sections["uplink"]
    for name in ("ca_file", "cert_file", "key_file"):
        path = uplink.values[name]
        if uplink.enabled and path is not None and not path.exists():
            raise ConfigError(f"uplink.{name}", f"{path} does not exist")
    if (uplink.cert_file is None) != (uplink.key_file is None):
        raise ConfigError("uplink.key_file", "cert_file and key_file go together (client certificate)")
    if uplink.enabled and uplink.tls:
        try:  # a file that is not a certificate, or a key that does not match, fails here, not on connect
            tls_context(uplink.ca_file, uplink.cert_file, uplink.key_file, uplink.tls_insecure)
        except TlsSetupError as e:
            raise ConfigError(f"uplink.{e.option}", str(e)) from None
    broker = sections["broker"]
    if (broker.tls_cert_file is None) != (broker.tls_key_file is None):
        raise ConfigError("broker.tls_key_file", "tls_cert_file and tls_key_file go together")
    if broker.user == sections["homeassistant"].user:
        raise ConfigError("homeassistant.user", "must differ from broker.user")
    meter = _parse_meter(raw["meter"], registry, base_dir) if "meter" in raw else None
    return GatewayConfig(source=source, registry=registry, meter=meter, **sections)


def _parse_meter(raw: Any, registry: Registry, base_dir: Path) -> Section | None:
    meter = Section(_table("meter", raw, METER_KEYS, base_dir))
    if not meter.enabled:
        return None
    needs, other = ("host", "serial_port") if meter.transport == "tcp" else ("serial_port", "host")
    if meter.values[needs] is None:
        raise ConfigError(f"meter.{needs}", f'required when meter.transport = "{meter.transport}"')
    if meter.values[other] is not None:
        raise ConfigError(f"meter.{other}", f'not used with meter.transport = "{meter.transport}"')
    households = registry.households()
    if meter.household not in households:
        raise ConfigError("meter.household", f"no node in the registry belongs to household {meter.household!r} "
                          f"(households: {', '.join(sorted(households)) or 'none'})")
    if not any(c.grid for e in households[meter.household] for c in e.channels.values()):
        raise ConfigError("meter.household", f"household {meter.household!r} has no channel with grid = true: "
                          "the meter is checked against the circuits at its grid connection")
    if meter.period_s >= meter.max_bracket_s:
        raise ConfigError("meter.max_bracket_s", f"must be longer than meter.period_s ({meter.period_s:g} s), "
                          "else no interval boundary could be interpolated between two readings")
    return meter


def load_config(path: Path | str, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read, override and validate gateway.toml. Relative paths are relative to its folder."""
    path = Path(path)
    return parse_config(_read_toml(path), path.resolve().parent, source=path, env=env)

