"""validator.toml (LEDGER.md §16): loaded and checked at start-up; a bad value fails fast naming
its key. `GRIDHIVE_LEDGER_<KEY>` environment variables override keys of [validator]."""
import dataclasses
import importlib
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .codec import is_hex
from .consensus import ConsensusConfig
from .crypto import SigningKey
from .mempool import MempoolConfig
from .node import NodeConfig
from .state import chain_params, check_genesis

DEFAULT_RULES = "gridhive.market.contract:MarketContract"


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class P2PConfig:
    dial_timeout_ms: int = 3_000
    handshake_timeout_ms: int = 5_000
    reconnect_min_ms: int = 200             # backoff doubles up to max, with jitter
    reconnect_max_ms: int = 10_000
    ping_ms: int = 1_000                    # a link idle this long sends an empty frame
    idle_timeout_ms: int = 6_000            # a link silent this long is closed and redialled
    max_send_buffer_bytes: int = 32 * 1024 * 1024   # per peer; beyond it frames are dropped (retransmits heal)


@dataclass(frozen=True)
class PeerAddress:
    key: str
    host: str
    port: int


@dataclass(frozen=True)
class ServiceConfig:
    genesis: dict
    key: SigningKey
    data_dir: Path
    listen: tuple[str, int]
    api: str                                # "host:port" or "unix:/path/to.sock"
    peers: tuple[PeerAddress, ...] = ()
    rules: str = DEFAULT_RULES
    node: NodeConfig = field(default_factory=NodeConfig)
    p2p: P2PConfig = field(default_factory=P2PConfig)
    admin: bool = False                     # test-only endpoints (partition switch)
    clock_offset_ms: int = 0                # test-only skew of this validator's clock

    def make_rules(self):
        module, _, name = self.rules.partition(":")
        return getattr(importlib.import_module(module), name)()


def parse_address(text, where: str) -> tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{where}: expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _section(raw: dict, name: str, cls, where: str):
    values = raw.get(name, {})
    if type(values) is not dict:
        raise ConfigError(f"{where}: [{name}] must be a table")
    known = {f.name: f.type for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{where}: [{name}] {key}: unknown key (known: {', '.join(sorted(known))})")
        if type(value) is not int or value < 0:
            raise ConfigError(f"{where}: [{name}] {key}: expected a non-negative integer, got {value!r}")
    return cls(**values)


def load_key(path: Path) -> SigningKey:
    text = path.read_text().strip()
    if not is_hex(text, 64):
        raise ConfigError(f"{path}: expected a 32-byte Ed25519 seed as 64 hex characters")
    return SigningKey.from_seed(bytes.fromhex(text))


def load(path: Path, environ=os.environ) -> ServiceConfig:
    where = str(path)
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    for name in raw:
        if name not in ("validator", "consensus", "mempool", "p2p", "peers", "test"):
            raise ConfigError(f"{where}: [{name}]: unknown section")
    v = dict(raw.get("validator", {}))
    for name in ("genesis", "key_file", "data_dir", "listen", "api", "rules"):
        env = environ.get(f"GRIDHIVE_LEDGER_{name.upper()}")
        if env is not None:
            v[name] = env
    for name in v:
        if name not in ("genesis", "key_file", "data_dir", "listen", "api", "rules"):
            raise ConfigError(f"{where}: [validator] {name}: unknown key")
    for name in ("genesis", "key_file", "data_dir", "listen", "api"):
        if type(v.get(name)) is not str:
            raise ConfigError(f"{where}: [validator] {name}: missing (a string)")
    base = path.parent
    try:
        genesis = json.loads((base / v["genesis"]).read_text())
        check_genesis(genesis)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{where}: [validator] genesis: {exc}") from None
    try:
        key = load_key(base / v["key_file"])
    except OSError as exc:
        raise ConfigError(f"{where}: [validator] key_file: {exc}") from None
    api = v["api"]
    if not api.startswith("unix:"):
        parse_address(api, f"{where}: [validator] api")
    peers = []
    for i, p in enumerate(raw.get("peers", [])):
        if type(p) is not dict or set(p) != {"key", "address"} or not is_hex(p["key"], 64):
            raise ConfigError(f"{where}: [[peers]] #{i + 1}: expected key (64 hex) and address")
        peers.append(PeerAddress(p["key"], *parse_address(p["address"], f"{where}: [[peers]] #{i + 1} address")))
    test = raw.get("test", {})
    for name, value in test.items():
        if name not in ("admin", "clock_offset_ms") or type(value) is not (bool if name == "admin" else int):
            raise ConfigError(f"{where}: [test] {name}: unknown key or wrong type")
    config = ServiceConfig(
        genesis=genesis, key=key, data_dir=base / v["data_dir"],
        listen=parse_address(v["listen"], f"{where}: [validator] listen"), api=api, peers=tuple(peers),
        rules=v.get("rules", DEFAULT_RULES),
        node=NodeConfig(consensus=_section(raw, "consensus", ConsensusConfig, where),
                        mempool=_section(raw, "mempool", MempoolConfig, where)),
        p2p=_section(raw, "p2p", P2PConfig, where),
        admin=test.get("admin", False), clock_offset_ms=test.get("clock_offset_ms", 0))
    try:
        config.make_rules().for_chain(chain_params(genesis), genesis.get("feeders", {}))
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"{where}: [validator] rules: {exc}") from None
    return config
