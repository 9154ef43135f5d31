"""Bad input to the gateway's HTTP API, against a real running gateway (uvicorn on a real socket,
a real Mosquitto): every refusal is a JSON error with the right status (never a 500), counted in
gridhive_gateway_http_rejected_total{reason}, logged once, and the gateway keeps answering."""
import json
import logging
import urllib.error
import urllib.request

import pytest

pytestmark = pytest.mark.broker


def call(gwt, method: str, path: str, body: bytes | None = None):
    """(status, parsed JSON body or the raw text, headers); no exception on 4xx/5xx."""
    req = urllib.request.Request(gwt.url(path), data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            status, headers, raw = r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        status, headers, raw = e.code, e.headers, e.read()
    if headers.get_content_type() == "application/json":
        return status, json.loads(raw), headers
    return status, raw.decode(errors="replace"), headers


def error(gwt, method: str, path: str, body: bytes | None = None, status: int = 422) -> str:
    """The request is refused with `status` and a JSON {"error": ...}; returns the message."""
    got, answer, _ = call(gwt, method, path, body)
    assert got == status and isinstance(answer, dict) and isinstance(answer.get("error"), str), (got, answer)
    return answer["error"]


def still_serving(gwt) -> None:
    status, body, _ = call(gwt, "GET", "/api/energy?start_ms=0&end_ms=4000000000000")
    assert status == 200 and body["interval_s"] == 900
    # a well-formed command still reaches the command logic (n2 has not reported yet: 409)
    status, body, _ = call(gwt, "POST", "/api/nodes/n2/relays/0", b'{"action": "on"}')
    assert status == 409 and "boot id is unknown" in body["error"]


def rejected(gwt) -> dict[str, float]:
    text = urllib.request.urlopen(gwt.url("/metrics"), timeout=10).read().decode()
    prefix = "gridhive_gateway_http_rejected_total{reason=\""
    return {line[len(prefix):].split('"')[0]: float(line.split()[-1])
            for line in text.splitlines() if line.startswith(prefix)}


@pytest.mark.parametrize("bad", ["start_ms=0&end_ms=9223372036854775808", "start_ms=0&end_ms=99999999999999999999999",
                                 "start_ms=-1&end_ms=10", "start_ms=0&end_ms=1e3", "start_ms=0", ""])
def test_energy_times_out_of_range_or_missing_are_422(gateway, bad):
    message = error(gateway, "GET", f"/api/energy?{bad}")
    assert "start_ms and end_ms" in message and "integers" in message
    assert error(gateway, "GET", f"/api/meter/readings?{bad}", status=404)  # no [meter]: its own 404 first
    still_serving(gateway)


def test_the_largest_sqlite_integer_is_still_a_valid_end(gateway):
    status, body, _ = call(gateway, "GET", f"/api/energy?start_ms=0&end_ms={2 ** 63 - 1}")
    assert status == 200 and body["households"] == {}


def test_start_after_end_is_422_and_an_empty_range_is_allowed(gateway):
    assert "start_ms must not be after end_ms" in error(gateway, "GET", "/api/energy?start_ms=2000&end_ms=1000")
    status, body, _ = call(gateway, "GET", "/api/energy?start_ms=1000&end_ms=1000")
    assert status == 200 and body["circuits"] == []
    assert rejected(gateway) == {"bad_time_range": 1}
    still_serving(gateway)


def test_deeply_nested_json_is_422_and_a_huge_body_413(gateway):
    assert "must be a JSON object" in error(gateway, "POST", "/api/nodes/n1/relays/0", b"[" * 3000)
    assert "4096 bytes" in error(gateway, "POST", "/api/nodes/n1/relays/0", b"[" * 100_000, status=413)
    big_but_valid = json.dumps({"action": "on", "pad": "x" * 5000}).encode()
    assert "4096 bytes" in error(gateway, "POST", "/api/nodes/n1/relays/0", big_but_valid, status=413)
    assert rejected(gateway) == {"bad_body": 1, "body_too_large": 2}
    still_serving(gateway)


def test_unrouted_paths_and_methods_are_json(gateway):
    assert error(gateway, "GET", "/api/nosuch", status=404) == "no such endpoint: GET /api/nosuch"
    status, body, headers = call(gateway, "GET", "/api/nodes/n1/relays/0")
    assert status == 405 and headers.get_content_type() == "application/json", (status, body)
    assert headers["Allow"] == "POST" and "POST" in body["error"] and "GET" in body["error"]
    assert "GET" in error(gateway, "POST", "/api/energy", b"{}", status=405)
    for relay in ("x", "-1", "1.5", "9" * 5000):
        assert "relay must be a whole number, got" in error(gateway, "POST", f"/api/nodes/n1/relays/{relay}",
                                                           b'{"action": "on"}')
    assert rejected(gateway) == {"not_found": 1, "method_not_allowed": 2, "bad_relay": 4}
    still_serving(gateway)


@pytest.mark.parametrize("body", [b"", b"{}", b'{"action": null}', b'{"action": 1}', b"[]", b"not json",
                                  b"\xff\xfe"])
def test_a_body_without_an_action_says_what_is_expected(gateway, body):
    message = error(gateway, "POST", "/api/nodes/n1/relays/0", body)
    assert message.startswith("the body must be a JSON object with action: on, off or toggle"), message
    assert "None" not in message
    still_serving(gateway)


@pytest.mark.parametrize("timeout", ["true", "false", '"5"', "[5]", "0", "601", "NaN", "Infinity"])
def test_timeout_must_be_a_number_of_seconds(gateway, timeout):
    message = error(gateway, "POST", "/api/nodes/n1/relays/0", b'{"action": "on", "timeout_s": %s}' % timeout.encode())
    assert "timeout_s must be a number of seconds" in message
    assert rejected(gateway) == {"bad_timeout": 1}
    still_serving(gateway)


def test_rejections_are_counted_each_time_and_logged_once_per_reason(gateway, caplog):
    caplog.set_level(logging.INFO, logger="gridhive.gateway")
    for _ in range(3):
        error(gateway, "GET", "/api/nosuch", status=404)
        error(gateway, "POST", "/api/nodes/n9/relays/0", b'{"action": "on"}', status=404)  # unknown node
        error(gateway, "POST", "/api/nodes/n1/relays/0", b'{"action": "explode"}')
    assert rejected(gateway) == {"not_found": 3, "unknown_node": 3, "bad_command": 3}
    lines = [r.getMessage() for r in caplog.records if "rejected HTTP request" in r.getMessage()]
    assert len(lines) == 3 and {line.split()[3].rstrip(":") for line in lines} == {"not_found", "unknown_node", "bad_command"}, lines
    assert any("GET /api/nosuch" in line for line in lines)
    still_serving(gateway)
