"""Generate a testnet (LEDGER.md §16): fresh keys, one genesis, one validator.toml per validator,
every validator listing every other as a peer. On loopback with free ports by default, or on
given hosts (network namespaces) with one port."""
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from gridhive.broker import free_ports

from .crypto import SigningKey

P2P_PORT = 26600


@dataclass(frozen=True)
class TestnetNode:
    index: int
    key: str                  # validator public key
    dir: Path
    config: Path
    p2p: tuple[str, int]
    api: str                  # "host:port" or "unix:/path"


@dataclass
class Testnet:
    dir: Path
    chain_id: str
    genesis: dict
    operator: SigningKey
    gateway: SigningKey       # the gateway key of every client household
    clients: list[SigningKey] = field(default_factory=list)
    nodes: list[TestnetNode] = field(default_factory=list)
    member_keys: dict[str, Path] = field(default_factory=dict)  # household -> its key file


def _write_key(path: Path, key: SigningKey) -> None:
    path.write_text(key.seed().hex() + "\n")
    os.chmod(path, 0o600)


def _toml_value(value) -> str:
    return json.dumps(value) if not isinstance(value, bool) else str(value).lower()


def generate(out_dir: Path, n: int = 4, *, chain_id: str = "gridhive-testnet", hosts: list[str] | None = None,
             api: str = "tcp", clients: int = 0, client_balance_minor: int = 10**9,
             consensus: dict | None = None, mempool: dict | None = None, p2p: dict | None = None,
             params: dict | None = None, admin: bool = False,
             members: list[tuple[str, int, str]] = ()) -> Testnet:
    """`hosts`: one p2p address per validator (all on port 26600); None = loopback, free ports.
    `api`: "tcp" (loopback, free port) or "unix" (a socket in each validator's dir, reachable
    from any network namespace). `clients`: member households c0… with funded keys (for load).
    `members`: (household, validator index, role): a funded household whose gateway is that
    validator, as in a community where each gateway is an authority (key in members/<household>.key)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = [SigningKey.generate() for _ in range(n)]
    operator, gateway = SigningKey.generate(), SigningKey.generate()
    client_keys = [SigningKey.generate() for _ in range(clients)]
    member_keys = {household: SigningKey.generate() for household, _, _ in members}
    genesis = {
        "chain_id": chain_id, "genesis_time_ms": int(time.time() * 1000), "operator": operator.public_hex,
        "validators": {k.public_hex: 1 for k in keys},
        "accounts": {operator.public_hex: client_balance_minor,
                     **{c.public_hex: client_balance_minor for c in [*client_keys, *member_keys.values()]}},
        "members": {**{f"c{i}": {"key": c.public_hex, "gateway": gateway.public_hex, "role": "prosumer"}
                       for i, c in enumerate(client_keys)},
                    **{household: {"key": member_keys[household].public_hex, "gateway": keys[v].public_hex,
                                   "role": role} for household, v, role in members}},
        "params": params or {},
    }
    (out_dir / "genesis.json").write_text(json.dumps(genesis, indent=1, sort_keys=True) + "\n")
    _write_key(out_dir / "operator.key", operator)
    _write_key(out_dir / "gateway.key", gateway)
    if client_keys:
        (out_dir / "clients.keys").write_text("".join(c.seed().hex() + "\n" for c in client_keys))
        os.chmod(out_dir / "clients.keys", 0o600)
    net = Testnet(out_dir, chain_id, genesis, operator, gateway, client_keys)
    if member_keys:
        (out_dir / "members").mkdir(exist_ok=True)
        for household, key in member_keys.items():
            _write_key(out_dir / "members" / f"{household}.key", key)
            net.member_keys[household] = out_dir / "members" / f"{household}.key"
    ports = free_ports(2 * n)  # p2p and API ports of every validator, all distinct
    addresses = [(hosts[i], P2P_PORT) if hosts else ("127.0.0.1", ports[i]) for i in range(n)]
    for i, key in enumerate(keys):
        node_dir = out_dir / f"v{i}"
        node_dir.mkdir(exist_ok=True)
        _write_key(node_dir / "validator.key", key)
        api_address = f"unix:{node_dir.resolve() / 'api.sock'}" if api == "unix" else f"127.0.0.1:{ports[n + i]}"
        lines = ["[validator]", 'genesis = "../genesis.json"', 'key_file = "validator.key"', 'data_dir = "data"',
                 f'listen = "{addresses[i][0]}:{addresses[i][1]}"', f'api = "{api_address}"', ""]
        for section, values in (("consensus", consensus), ("mempool", mempool), ("p2p", p2p)):
            if values:
                lines += [f"[{section}]", *(f"{k} = {_toml_value(v)}" for k, v in values.items()), ""]
        if admin:
            lines += ["[test]", "admin = true", ""]
        for j, other in enumerate(keys):
            if j != i:
                lines += ["[[peers]]", f'key = "{other.public_hex}"', f'address = "{addresses[j][0]}:{addresses[j][1]}"', ""]
        config = node_dir / "validator.toml"
        config.write_text("\n".join(lines))
        net.nodes.append(TestnetNode(i, key.public_hex, node_dir, config, addresses[i], api_address))
    return net


def load_clients(out_dir: Path) -> list[SigningKey]:
    path = Path(out_dir) / "clients.keys"
    return [SigningKey.from_seed(bytes.fromhex(line)) for line in path.read_text().split()] if path.exists() else []
