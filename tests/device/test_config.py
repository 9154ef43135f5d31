from devtest import make_tmpdir, raises
import json

from ghnode.config import ConfigError, ConfigMissing, load_config, validate

SECRET = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"


def _minimal():
    return {
        "node_id": "house-7",
        "secret_hex": SECRET,
        "wifi": {"ssid": "lec-net", "password": "correct horse"},
        "mqtt": {"host": "192.168.1.10"},
    }


def _full():
    c = _minimal()
    c["channels"] = [
        {"name": "mains_v", "pin": 36, "kind": "voltage", "gain": 234.5},
        {"name": "ev", "pin": 39, "rating_a": 30, "phase_deg": 1.7, "offset": 12, "noise_floor_ma": 40},
        {"name": "heat_pump", "pin": 34, "kind": "ct", "rating_a": 50},
    ]
    c["relays"] = [
        {"name": "ev", "pin": 25, "channel": "ev", "max_current_ma": 16000, "power_up": "restore"},
        {"name": "boiler", "pin": 26, "active_low": True, "channel": 2, "min_on_ms": 60000,
         "failsafe": "off"},
    ]
    return c


def _error(cfg):
    return raises(ConfigError, validate, cfg)


def test_minimal_config_gets_every_default():
    cfg = validate(_minimal())
    assert cfg["mqtt"] == {"host": "192.168.1.10", "port": 1883, "keepalive_s": 30, "user": None,
                           "password": None, "tls": False}
    assert cfg["mains"] == {"frequency_hz": 50, "nominal_voltage_v": 230, "cycles": 10}
    assert cfg["telemetry"] == {"period_s": 10, "change_w": 50, "health_period_s": 60}
    assert cfg["buffer"] == {"slots": 1024, "slot_bytes": 1024}
    assert cfg["channels"] == [] and cfg["relays"] == []
    assert cfg["wdt_ms"] == 30000 and cfg["ntp_host"] is None and cfg["chip"] == "esp32"


def test_full_config_is_normalised():
    cfg = validate(_full())
    ev = cfg["channels"][1]
    assert ev["kind"] == "ct" and ev["gain"] == 50.0 and ev["noise_floor_ma"] == 40
    assert cfg["channels"][0]["rating_a"] is None
    assert cfg["channels"][2]["noise_floor_ma"] == 0
    r0, r1 = cfg["relays"]
    assert r0["channel"] == 1  # name resolved to the channel's index
    assert r1["channel"] == 2
    assert r0["failsafe"] == "hold" and r0["min_off_ms"] == 0 and r1["active_low"] is True


def test_a_normalised_config_validates_to_itself():
    # `gridhive flash` writes the normalised dict to /config.json; the node must accept it.
    once = validate(_full())
    assert validate(json.loads(json.dumps(once))) == once


def test_tls_changes_the_default_port_only():
    c = _minimal()
    c["mqtt"]["tls"] = True
    assert validate(c)["mqtt"]["port"] == 8883
    c["mqtt"]["port"] = 9999
    assert validate(c)["mqtt"]["port"] == 9999


def test_defaults_are_not_shared_between_configs():
    a = validate(_minimal())
    a["channels"].append("x")
    a["mains"]["cycles"] = 99
    b = validate(_minimal())
    assert b["channels"] == [] and b["mains"]["cycles"] == 10


def test_the_brief_example_message():
    c = _full()
    c["relays"][1]["min_on_ms"] = "abc"
    e = _error(c)
    assert str(e) == "relays[1].min_on_ms: expected an integer >= 0, got 'abc'"
    assert e.key == "relays[1].min_on_ms"


def _set(path, value):
    """A mutation of _full(): set (or with value DEL, delete) the key at a dotted path."""
    def apply(c):
        obj = c
        parts = path.replace("[", ".").replace("]", "").split(".")
        for p in parts[:-1]:
            obj = obj[int(p)] if isinstance(obj, list) else obj[p]
        last = parts[-1]
        if value is DEL:
            del obj[last]
        else:
            obj[last] = value
    return apply


DEL = object()

# (mutation, key the error must name)
CASES = [
    (_set("node_id", "House 7"), "node_id"),
    (_set("node_id", ""), "node_id"),
    (_set("node_id", "x" * 33), "node_id"),
    (_set("node_id", DEL), "node_id"),
    (_set("secret_hex", "abc"), "secret_hex"),
    (_set("secret_hex", "g" * 64), "secret_hex"),
    (_set("secret_hex", "0" * 64), "secret_hex"),
    (_set("secret_hex", 5), "secret_hex"),
    (_set("chip", "esp8266"), "chip"),
    (_set("wifi", "lec-net"), "wifi"),
    (_set("wifi.ssid", ""), "wifi.ssid"),
    (_set("wifi.ssid", DEL), "wifi.ssid"),
    (_set("wifi.passwd", "x"), "wifi.passwd"),
    (_set("mqtt", DEL), "mqtt"),
    (_set("mqtt.port", 0), "mqtt.port"),
    (_set("mqtt.port", "1883"), "mqtt.port"),
    (_set("mqtt.port", 1883.0), "mqtt.port"),
    (_set("mqtt.keepalive_s", 0), "mqtt.keepalive_s"),
    (_set("mqtt.tls", "yes"), "mqtt.tls"),
    (_set("mqtt.tls", 1), "mqtt.tls"),
    (_set("mqtt.user", ""), "mqtt.user"),
    (_set("mqtt.prot", 1), "mqtt.prot"),
    (_set("mains", {"frequency_hz": 55}), "mains.frequency_hz"),
    (_set("mains", {"nominal_voltage_v": True}), "mains.nominal_voltage_v"),
    (_set("mains", {"cycles": 0}), "mains.cycles"),
    (_set("channels", {}), "channels"),
    (_set("channels[1].name", "EV"), "channels[1].name"),
    (_set("channels[1].name", "mains_v"), "channels[1].name"),
    (_set("channels[1].pin", 25), "channels[1].pin"),
    (_set("channels[1].pin", 36), "channels[1].pin"),
    (_set("channels[1].pin", DEL), "channels[1].pin"),
    (_set("channels[1].kind", "cT"), "channels[1].kind"),
    (_set("channels[1].kind", "voltage"), "channels[1].kind"),
    (_set("channels[1].rating_a", DEL), "channels[1].rating_a"),
    (_set("channels[1].rating_a", 0), "channels[1].rating_a"),
    (_set("channels[1].gain", "1"), "channels[1].gain"),
    (_set("channels[1].phase", 90), "channels[1].phase"),
    (_set("channels[1].offset", 1.5), "channels[1].offset"),
    (_set("channels[1].noise_floor_ma", -1), "channels[1].noise_floor_ma"),
    (_set("channels[0].rating_a", 10), "channels[0].rating_a"),
    (_set("channels[2].ratng_a", 10), "channels[2].ratng_a"),
    (_set("relays[0].pin", 39), "relays[0].pin"),
    (_set("relays[0].pin", 7), "relays[0].pin"),
    (_set("relays[0].pin", 40), "relays[0].pin"),
    (_set("relays[1].pin", 25), "relays[1].pin"),
    (_set("relays[1].name", "ev"), "relays[1].name"),
    (_set("relays[1].active_low", "true"), "relays[1].active_low"),
    (_set("relays[1].power_up", "restored"), "relays[1].power_up"),
    (_set("relays[1].min_off_ms", -5), "relays[1].min_off_ms"),
    (_set("relays[1].max_switches", None), "relays[1].max_switches"),
    (_set("relays[1].window_ms", 10), "relays[1].window_ms"),
    (_set("relays[1].auto_off_ms", "1h"), "relays[1].auto_off_ms"),
    (_set("relays[1].max_current_ma", 1.5), "relays[1].max_current_ma"),
    (_set("relays[1].max_power_w", -1), "relays[1].max_power_w"),
    (_set("relays[1].failsafe", "safe"), "relays[1].failsafe"),
    (_set("relays[1].link_lost_ms", 0), "relays[1].link_lost_ms"),
    (_set("relays[1].channel", 0), "relays[1].channel"),
    (_set("relays[1].channel", 3), "relays[1].channel"),
    (_set("relays[1].channel", "fridge"), "relays[1].channel"),
    (_set("relays[1].channel", True), "relays[1].channel"),
    (_set("relays[0].channel", DEL), "relays[0].channel"),
    (_set("relays[1].manual_hold_ms", "x"), "relays[1].manual_hold_ms"),
    (_set("relays[1].colour", "red"), "relays[1].colour"),
    (_set("telemetry", {"period_s": 0}), "telemetry.period_s"),
    (_set("telemetry", {"change_w": -1}), "telemetry.change_w"),
    (_set("telemetry", {"health_period_s": 5}), "telemetry.health_period_s"),
    (_set("telemetry", {"period": 5}), "telemetry.period"),
    (_set("buffer", {"slots": 4}), "buffer.slots"),
    (_set("buffer", {"slot_bytes": 100000}), "buffer.slot_bytes"),
    (_set("buffer", {"slots": 4096, "slot_bytes": 4096}), "buffer"),
    (_set("wdt_ms", 500), "wdt_ms"),
    (_set("ntp_host", ""), "ntp_host"),
    (_set("ntp_hots", "pool.ntp.org"), "ntp_hots"),
]


def test_every_error_names_the_key():
    for i, (mutate, key) in enumerate(CASES):
        c = _full()
        mutate(c)
        e = raises(ConfigError, validate, c)
        assert e.key == key, "case %d: expected key %s, got %r (%s)" % (i, key, e.key, e)
        assert str(e).startswith(key + ": "), "case %d: %s" % (i, e)


def test_unknown_key_lists_the_valid_ones():
    c = _minimal()
    c["mqtt"]["hots"] = "x"
    msg = str(_error(c))
    assert msg.startswith("mqtt.hots: unknown key") and "host" in msg and "keepalive_s" in msg


def test_missing_required_key_says_so():
    c = _minimal()
    del c["secret_hex"]
    assert str(_error(c)) == "secret_hex: required key is missing"


def test_secret_is_never_echoed():
    c = _minimal()
    c["secret_hex"] = SECRET[:-1] + "z"
    msg = str(_error(c))
    assert SECRET[:20] not in msg and "hex" in msg


def test_second_voltage_channel_is_rejected():
    c = _full()
    c["channels"].append({"name": "v2", "pin": 35, "kind": "voltage"})
    e = _error(c)
    assert e.key == "channels[3].kind" and "at most one voltage channel" in str(e)


def test_pins_depend_on_the_chip():
    c = _minimal()
    c["chip"] = "esp32s3"
    c["channels"] = [{"name": "a", "pin": 4, "rating_a": 20}]
    c["relays"] = [{"name": "r", "pin": 38}]
    assert validate(c)["relays"][0]["pin"] == 38
    c["relays"][0]["pin"] = 30
    assert _error(c).key == "relays[0].pin"  # flash/PSRAM pin on the S3


def test_top_level_must_be_an_object():
    e = _error([1, 2])
    assert "object" in str(e)


def _write(text):
    path = make_tmpdir("cfg") + "/config.json"
    with open(path, "w") as f:
        f.write(text)
    return path


def test_load_config_reads_and_validates_a_file():
    cfg = load_config(_write(json.dumps(_full())))
    assert cfg["node_id"] == "house-7" and cfg["relays"][0]["channel"] == 1


def test_missing_file_has_its_own_message():
    path = make_tmpdir("cfg") + "/config.json"
    e = raises(ConfigMissing, load_config, path)
    assert str(e) == "no config at %s: provision the node with `gridhive flash`" % path
    assert isinstance(e, ConfigError) and e.key is None


def test_bad_json_is_a_config_error():
    path = _write('{"node_id": "a",')
    e = raises(ConfigError, load_config, path)
    assert not isinstance(e, ConfigMissing)
    assert "not valid JSON" in str(e) and path in str(e)


def test_load_config_reports_schema_errors():
    c = _minimal()
    c["mqtt"]["port"] = 70000
    e = raises(ConfigError, load_config, _write(json.dumps(c)))
    assert e.key == "mqtt.port" and "1..65535" in str(e)
