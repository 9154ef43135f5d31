"""gateway.toml: validation names the bad key; env overrides; the node registry."""
from pathlib import Path

import pytest

from gwkit import secret, write_config
from gridhive.gateway.config import ConfigError, load_config


def config(tmp_path: Path, extra: str = "", **kw) -> Path:
    return write_config(tmp_path / "gateway.toml", broker_port=1883, extra=extra, **kw)


def error(path: Path, env=None) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        load_config(path, env=env or {})
    return e.value


def test_a_valid_config_loads_with_defaults_and_registry(tmp_path):
    cfg = load_config(config(tmp_path), env={})
    assert cfg.gateway_id == "gw1"
    assert cfg.storage.raw_retention_days == 7 and cfg.storage.minute_retention_days == 90
    assert cfg.storage.interval_s == 900 and cfg.uplink.batch_items == 100
    assert cfg.db_path == tmp_path / "data" / "gateway.sqlite3"
    n1 = cfg.registry.get("n1")
    assert n1.secret == secret("n1") and n1.household == "h-n1"
    assert n1.channels[0].grid and n1.channels[0].rating_a == 63.0 and n1.channel_name(1) == "ev"
    assert n1.channel_name(5) == "ch5" and n1.relays[0].name == "ev"
    assert cfg.registry.secret_for("nobody") is None
    assert set(cfg.registry.households()) == {"h-n1", "h-n2"}


@pytest.mark.parametrize("text, key, words", [
    ("[storage]\nraw_retention_days = 0\n", "storage.raw_retention_days", "1-3650, got 0"),
    ("[gpio]\nled_pni = 1\n", "gpio.led_pni", "valid keys"),
    ("[storage]\nprune_interval_s = true\n", "storage.prune_interval_s", "an integer"),
    ("[storage]\ninterval_s = 7\n", "storage.interval_s", "one of"),
    ("[nodes.BAD]\nsecret_hex = \"00\"\nhousehold = \"h\"\n", "nodes.BAD", "a-z 0-9"),
    ("[nodes.n3]\nhousehold = \"h\"\n", "nodes.n3.secret_hex", "missing"),
    ("[nodes.n3]\nsecret_hex = \"" + "0" * 64 + "\"\nhousehold = \"h\"\n", "nodes.n3.secret_hex", "all zero"),
    ("[nodes.gateway]\nsecret_hex = \"" + "1" * 64 + "\"\nhousehold = \"h\"\n", "nodes.gateway", "reserved"),
    ("[nodes.n3]\nsecret_hex = \"" + "1" * 64 + "\"\nhousehold = \"h\"\n"
     "[[nodes.n3.channels]]\nn = 0\nname = \"a\"\n[[nodes.n3.channels]]\nn = 0\nname = \"b\"\n",
     "nodes.n3.channels[1].n", "duplicate"),
    ("[mystery]\nx = 1\n", "mystery", "unknown section"),
])
def test_errors_name_the_bad_key(tmp_path, text, key, words):
    e = error(config(tmp_path, extra=text))
    assert e.key == key and words in str(e), str(e)


def test_a_value_out_of_range_from_the_file(tmp_path):
    path = config(tmp_path)
    path.write_text(path.read_text().replace("[http]\nport = 0", "[http]\nport = 70000"))
    e = error(path)
    assert e.key == "http.port" and "expected an integer 0-65535, got 70000" in str(e)


def test_a_duplicate_toml_table_or_missing_file_is_a_clear_error(tmp_path):
    assert "not valid TOML" in str(error(config(tmp_path, extra="[uplink]\nport = 1\n[uplink]\n")))
    assert "no config at" in str(error(tmp_path / "absent.toml"))


def test_environment_overrides_scalar_keys(tmp_path):
    path = config(tmp_path)
    cfg = load_config(path, env={"GRIDHIVE_GATEWAY__UPLINK__PORT": "8884",
                                 "GRIDHIVE_GATEWAY__UPLINK__HOST": "ctl.example",
                                 "GRIDHIVE_GATEWAY__BROKER__PASSWORD": "s3cret"})
    assert cfg.uplink.port == 8884 and cfg.uplink.host == "ctl.example" and cfg.broker.password == "s3cret"
    e = error(path, env={"GRIDHIVE_GATEWAY__UPLINK__PORT": "x"})
    assert e.key == "uplink.port"
    e = error(path, env={"GRIDHIVE_GATEWAY__UPLINK__PROT": "1"})
    assert e.key == "GRIDHIVE_GATEWAY__UPLINK__PROT" and "GRIDHIVE_GATEWAY__UPLINK__PORT" in str(e)


def test_the_registry_can_live_in_its_own_file(tmp_path):
    full = load_config(config(tmp_path), env={})
    nodes = tmp_path / "nodes.toml"
    text = (tmp_path / "gateway.toml").read_text()
    head, _, tail = text.partition("[nodes.")
    nodes.write_text("[nodes." + tail)
    main = tmp_path / "main.toml"
    main.write_text(head.replace('log_level = "INFO"', 'log_level = "INFO"\nregistry_file = "nodes.toml"'))
    cfg = load_config(main, env={})
    assert [e.node_id for e in cfg.registry] == [e.node_id for e in full.registry]
    nodes.write_text(nodes.read_text() + "[gateway]\nid = \"x\"\n")
    assert "only [nodes.<id>]" in str(error(main))


def test_uplink_tls_files_must_exist(tmp_path):
    e = error(config(tmp_path, extra="").with_name("gateway.toml"), env={
        "GRIDHIVE_GATEWAY__UPLINK__ENABLED": "true", "GRIDHIVE_GATEWAY__UPLINK__CA_FILE": '"ca.pem"'})
    assert e.key == "uplink.ca_file" and "does not exist" in str(e)
