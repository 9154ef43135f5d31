"""Node config validation. Runs on MicroPython and CPython.

The node's config is the JSON file /config.json (MicroPython has no TOML). Every key is checked;
an error names the key and what was expected, e.g.
    relays[1].min_on_ms: expected an integer >= 0, got 'abc'
Unknown keys are errors too, so a typo is never silently ignored. `validate` returns a new dict
with every default filled in. docs/NODE_CONFIG.md describes every key.
"""
import json
import os

DEFAULT_PATH = "/config.json"
_REQUIRED = object()

# Pins per chip: ADC1 inputs (ADC2 cannot be read while Wi-Fi is on), pins wired to the SPI
# flash/PSRAM (touching them crashes the board), input-only pins (cannot drive a relay).
_CHIPS = {
    "esp32": (range(32, 40), range(6, 12), range(34, 40), 39),
    "esp32s3": (range(1, 11), range(26, 33), (), 48),
    "esp32c3": (range(0, 5), range(12, 18), (), 21),
}
_ID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-"
_NAME_CHARS = _ID_CHARS + "_"
_HEX = "0123456789abcdef"


class ConfigError(ValueError):
    """A bad config. `key` is the dotted path of the offending key (None for the whole file)."""

    def __init__(self, key, problem):
        super().__init__("%s: %s" % (key, problem) if key else problem)
        self.key = key


class ConfigMissing(ConfigError):
    """There is no config file: the node was never provisioned."""


def _err(key, expected, got):
    return ConfigError(key, "expected %s, got %s" % (expected, _show(got)))


def _show(v):
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "null"
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


# --- value checkers: (key, value) -> normalised value, or raise ConfigError ---------------------

def _int(lo=None, hi=None):
    if hi is None:
        what = "an integer >= %d" % lo
    else:
        what = "an integer %d..%d" % (lo, hi)

    def check(key, v):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            raise _err(key, what, v)
        return v
    return check


def _num(lo, hi):
    what = "a number %s..%s" % (lo, hi)

    def check(key, v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            raise _err(key, what, v)
        return v
    return check


def _bool(key, v):
    if v is not True and v is not False:
        raise _err(key, "true or false", v)
    return v


def _one_of(*choices):
    what = "one of " + ", ".join(_show(c) for c in choices)

    def check(key, v):
        if isinstance(v, bool) or v not in choices:
            raise _err(key, what, v)
        return v
    return check


def _str(lo, hi, chars=None, what=None):
    if what is None:
        what = "a string of %d..%d characters" % (lo, hi)

    def check(key, v):
        if not isinstance(v, str) or not lo <= len(v) <= hi:
            raise _err(key, what, v)
        if chars:
            for c in v:
                if c not in chars:
                    raise _err(key, what, v)
        return v
    return check


def _opt(check):
    def opt(key, v):
        return None if v is None else check(key, v)
    return opt


def _secret(key, v):
    what = "64 hex digits (the node's 32-byte HMAC secret)"
    if not isinstance(v, str):
        raise _err(key, what, v)
    if len(v) != 64:
        raise ConfigError(key, "expected %s, got %d characters" % (what, len(v)))
    v = v.lower()
    for c in v:
        if c not in _HEX:
            raise ConfigError(key, "expected %s, got a non-hex character %r" % (what, c))
    if v.count("0") == 64:
        raise ConfigError(key, "is all zeros: provision a random secret")
    return v  # never echo the secret itself in an error


def _obj(fields):
    """fields: tuple of (name, checker, default); default _REQUIRED makes the key mandatory."""
    names = [f[0] for f in fields]

    def check(key, v):
        if not isinstance(v, dict):
            raise _err(key, "an object", v)
        pre = key + "." if key else ""
        for k in sorted(v):
            if k not in names:
                raise ConfigError(pre + str(k), "unknown key (expected one of: %s)" % ", ".join(names))
        out = {}
        for name, ck, default in fields:
            if name in v:
                out[name] = ck(pre + name, v[name])
            elif default is _REQUIRED:
                raise ConfigError(pre + name, "required key is missing")
            elif isinstance(default, (dict, list)):
                out[name] = ck(pre + name, default)  # a fresh copy, with a nested object's defaults
            else:
                out[name] = default
        return out
    return check


def _list(item, max_items):
    def check(key, v):
        if not isinstance(v, list) or len(v) > max_items:
            raise _err(key, "a list of at most %d items" % max_items, v)
        return [item("%s[%d]" % (key, i), x) for i, x in enumerate(v)]
    return check


# --- the schema ---------------------------------------------------------------------------------

_NAME = _str(1, 24, _NAME_CHARS, "a name of 1..24 characters a-z 0-9 _ -")
_MS = _int(0)

_WIFI = _obj((
    ("ssid", _str(1, 32), _REQUIRED),
    ("password", _str(0, 64), ""),
))
_MQTT = _obj((
    ("host", _str(1, 253), _REQUIRED),
    ("port", _int(1, 65535), None),  # None -> 1883, or 8883 with tls (filled in below)
    ("keepalive_s", _int(5, 3600), 30),
    ("user", _opt(_str(1, 64)), None),
    ("password", _opt(_str(0, 128)), None),
    ("tls", _bool, False),
))
_MAINS = _obj((
    ("frequency_hz", _one_of(50, 60), 50),
    ("nominal_voltage_v", _int(90, 480), 230),
    ("cycles", _int(1, 100), 10),
))
_CHANNEL = _obj((
    ("name", _NAME, _REQUIRED),
    ("pin", _int(0, 48), _REQUIRED),
    ("kind", _one_of("ct", "voltage"), "ct"),
    ("rating_a", _opt(_num(0.1, 1000)), None),  # ct only, required there
    ("gain", _opt(_num(0.001, 10000)), None),  # primary A (ct) or V (voltage) per ADC volt
    ("phase_deg", _num(-30, 30), 0),
    ("offset", _int(0, 100000), 0),  # noise RMS subtracted in quadrature: mA (ct) or mV (voltage)
    ("noise_floor_ma", _opt(_int(0, 100000)), None),  # ct only; default 0 (no squelch)
))
_RELAY = _obj((
    ("name", _NAME, _REQUIRED),
    ("pin", _int(0, 48), _REQUIRED),
    ("active_low", _bool, False),
    ("button_pin", _opt(_int(0, 48)), None),  # a local push button that toggles this relay
    ("power_up", _one_of("off", "on", "restore"), "off"),
    ("min_on_ms", _MS, 0),
    ("min_off_ms", _MS, 0),
    ("max_switches", _int(0), 0),
    ("window_ms", _int(1000), 3600000),
    ("auto_off_ms", _MS, 0),
    ("max_current_ma", _int(0), 0),
    ("max_power_w", _int(0), 0),
    ("failsafe", _one_of("off", "on", "hold"), "hold"),
    ("link_lost_ms", _int(1000), 300000),
    ("channel", lambda k, v: v, None),  # index or name of a ct channel: resolved in validate()
    ("manual_hold_ms", _MS, 3600000),
    ("trip_cooldown_ms", _MS, 60000),
))
_TELEMETRY = _obj((
    ("period_s", _int(1, 3600), 10),
    ("change_w", _int(0), 50),
    ("health_period_s", _int(10, 86400), 60),
))
_BUFFER = _obj((
    ("slots", _int(8, 4096), 1024),
    ("slot_bytes", _int(128, 4096), 1024),
))
_TOP = _obj((
    ("node_id", _str(1, 32, _ID_CHARS, "1..32 characters a-z 0-9 -"), _REQUIRED),
    ("secret_hex", _secret, _REQUIRED),
    ("chip", _one_of("esp32", "esp32s3", "esp32c3"), "esp32"),
    ("wifi", _WIFI, _REQUIRED),
    ("mqtt", _MQTT, _REQUIRED),
    ("mains", _MAINS, {}),
    ("channels", _list(_CHANNEL, 8), []),
    ("relays", _list(_RELAY, 8), []),
    ("telemetry", _TELEMETRY, {}),
    ("buffer", _BUFFER, {}),
    ("wdt_ms", _int(1000, 600000), 30000),
    ("ntp_host", _opt(_str(1, 253)), None),
))
BUFFER_MAX_BYTES = 1024 * 1024  # flash budget for the message buffer
# Default gains: a CT's rated current gives 0.6 V RMS at the ADC (e.g. SCT-013-030, 30 A : 1 V, into a
# 0.6 divider), which keeps 120 % of rating inside the ADC's linear range; a 230 V : 9 V adapter and
# divider gives 0.6 V RMS for 230 V.
CT_RATED_ADC_V = 0.6
VT_DEFAULT_GAIN = 383.0


def validate(raw):
    """Check a parsed config; return it normalised (defaults filled in) or raise ConfigError."""
    cfg = _TOP("", raw)
    adc1, flash, input_only, top = _CHIPS[cfg["chip"]]
    chip = cfg["chip"]
    mq = cfg["mqtt"]
    if mq["port"] is None:
        mq["port"] = 8883 if mq["tls"] else 1883

    pins = {}  # pin -> key that uses it

    def claim(key, pin):
        if pin > top:
            raise ConfigError(key, "%s has no GPIO%d (highest is %d)" % (chip, pin, top))
        if pin in flash:
            raise ConfigError(key, "GPIO%d is wired to the %s's flash; pick another pin" % (pin, chip))
        if pin in pins:
            raise ConfigError(key, "GPIO%d is already used by %s" % (pin, pins[pin]))
        pins[pin] = key

    names = {}
    voltage = None
    for i, ch in enumerate(cfg["channels"]):
        key = "channels[%d]" % i
        if ch["name"] in names:
            raise ConfigError(key + ".name", "duplicate channel name %r (also channels[%d])"
                              % (ch["name"], names[ch["name"]]))
        names[ch["name"]] = i
        if ch["pin"] not in adc1:
            raise ConfigError(key + ".pin", "expected an ADC1 pin of the %s (GPIO%d..%d; ADC2 cannot be "
                              "read while Wi-Fi is on), got %d" % (chip, adc1[0], adc1[-1], ch["pin"]))
        claim(key + ".pin", ch["pin"])
        if ch["kind"] == "ct":
            if ch["rating_a"] is None:
                raise ConfigError(key + ".rating_a", "required for a ct channel (the clamp's rating in A)")
            if ch["gain"] is None:
                ch["gain"] = ch["rating_a"] / CT_RATED_ADC_V
            if ch["noise_floor_ma"] is None:
                ch["noise_floor_ma"] = 0
        else:
            if voltage is not None:
                raise ConfigError(key + ".kind",
                                  "at most one voltage channel (channels[%d] is one)" % voltage)
            voltage = i
            if ch["gain"] is None:
                ch["gain"] = VT_DEFAULT_GAIN
            for k in ("rating_a", "noise_floor_ma"):
                if ch[k] is not None:
                    raise ConfigError(key + "." + k, "only applies to ct channels")

    rnames = {}
    for i, r in enumerate(cfg["relays"]):
        key = "relays[%d]" % i
        if r["name"] in rnames:
            raise ConfigError(key + ".name", "duplicate relay name %r (also relays[%d])"
                              % (r["name"], rnames[r["name"]]))
        rnames[r["name"]] = i
        if r["pin"] in input_only:
            raise ConfigError(key + ".pin", "GPIO%d of the %s is input-only and cannot drive a relay"
                              % (r["pin"], chip))
        claim(key + ".pin", r["pin"])
        if r["button_pin"] is not None:
            claim(key + ".button_pin", r["button_pin"])
        c = r["channel"]
        if c is not None:
            what = "the index or name of a ct channel"
            if isinstance(c, str):
                if c not in names:
                    raise _err(key + ".channel", what, c)
                c = names[c]
            elif isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < len(cfg["channels"]):
                raise _err(key + ".channel", what, c)
            if cfg["channels"][c]["kind"] != "ct":
                raise ConfigError(key + ".channel", "expected %s, got %s (channels[%d] is a voltage channel)"
                                  % (what, _show(r["channel"]), c))
            r["channel"] = c
        elif r["max_current_ma"] or r["max_power_w"]:
            raise ConfigError(key + ".channel", "required when max_current_ma or max_power_w is set "
                              "(the ct channel that measures this circuit)")

    buf = cfg["buffer"]
    if buf["slots"] * buf["slot_bytes"] > BUFFER_MAX_BYTES:
        raise ConfigError("buffer", "slots * slot_bytes = %d bytes exceeds the %d-byte flash budget"
                          % (buf["slots"] * buf["slot_bytes"], BUFFER_MAX_BYTES))
    return cfg


def load_config(path=DEFAULT_PATH):
    """Read and validate the config file; return the normalised config or raise ConfigError."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError:
        try:
            os.stat(path)
        except OSError:  # errno values differ between ports; a failing stat means "not there"
            raise ConfigMissing(None, "no config at %s: provision the node with `gridhive flash`" % path)
        raise ConfigError(None, "cannot read %s" % path)
    try:
        obj = json.loads(raw.decode())
    except (ValueError, UnicodeError) as e:
        raise ConfigError(None, "%s is not valid JSON (%s)" % (path, e))
    return validate(obj)
