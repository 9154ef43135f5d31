"""Prometheus metrics of one gateway, in their own registry (served at /metrics)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class GatewayMetrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        p = "gridhive_gateway_"
        self.accepted = Counter(p + "messages_accepted", "Node messages verified and stored", ["kind"], registry=r)
        self.rejected = Counter(p + "messages_rejected", "Node messages rejected, by reason", ["reason"], registry=r)
        self.duplicates = Counter(p + "messages_duplicate", "Node messages already stored (acked again)", registry=r)
        self.counter_resets = Counter(p + "counter_resets", "Energy counters restarted lower after a node reboot",
                                      registry=r)
        self.acks_sent = Counter(p + "acks_sent", "Ack messages published to nodes", registry=r)
        self.commit_s = Histogram(p + "commit_seconds", "SQLite commit time per ingest batch", registry=r,
                                  buckets=_LATENCY_S)
        self.ingest_latency_s = Histogram(p + "ingest_latency_seconds", "Receive to stored-and-acked",
                                          registry=r, buckets=_LATENCY_S)
        self.pending = Gauge(p + "ingest_pending_messages", "Messages received, not yet committed", registry=r)
        self.outbox_items = Gauge(p + "outbox_items", "Stored messages not yet in an uplink batch", registry=r)
        self.outbox_batches = Gauge(p + "outbox_batches", "Uplink batches awaiting the controller's ack", registry=r)
        self.uplink_inflight = Gauge(p + "uplink_inflight_batches", "Uplink batches sent, not yet acked", registry=r)
        self.uplink_sent = Counter(p + "uplink_batches_sent", "Uplink batch publications (with resends)", registry=r)
        self.uplink_acked = Counter(p + "uplink_batches_acked", "Uplink batches acknowledged", registry=r)
        self.uplink_ack_s = Histogram(p + "uplink_ack_seconds", "Uplink batch publish to controller ack",
                                      registry=r, buckets=_LATENCY_S)
        self.uplink_bad_acks = Counter(p + "uplink_bad_acks", "Unreadable messages on the ack topic", registry=r)
        self.connected = Gauge(p + "mqtt_connected", "1 while the MQTT link is up", ["link"], registry=r)
        self.nodes_online = Gauge(p + "nodes_online", "Nodes whose last status was online", registry=r)
        self.commands = Counter(p + "relay_commands", "Relay commands by result", ["result"], registry=r)
        self.command_s = Histogram(p + "relay_command_seconds", "Relay command to node reply", registry=r,
                                   buckets=_LATENCY_S)
        self.pruned = Counter(p + "pruned_rows", "Rows removed by retention", ["table"], registry=r)
        self.connect_failures = Counter(p + "mqtt_connect_failures", "Failed MQTT connection attempts",
                                        ["link", "reason"], registry=r)
        self.http_rejected = Counter(p + "http_rejected", "HTTP API requests refused, by reason", ["reason"],
                                     registry=r)


class MeterMetrics:
    """The utility meter's metrics, in the gateway's registry; registered only when a [meter] is set."""

    def __init__(self, r: CollectorRegistry):
        p = "gridhive_gateway_meter_"
        self.readings = Counter(p + "readings", "Meter slots read", registry=r)
        self.gaps = Counter(p + "gaps", "Meter slots not read, by reason", ["reason"], registry=r)
        self.request_errors = Counter(p + "request_errors", "Failed Modbus requests (retried or not), by reason",
                                      ["reason"], registry=r)
        self.retries = Counter(p + "retries", "Modbus requests retried", registry=r)
        self.rejected_values = Counter(p + "rejected_values", "Meter values refused by validation, by reason",
                                       ["reason"], registry=r)
        self.up = Gauge(p + "up", "1 when the meter's last slot was read", registry=r)
        self.power_w = Gauge(p + "power_w", "Power at the meter, + import, - export", registry=r)
        self.energy_wh = Gauge(p + "energy_wh", "The meter's energy counters", ["direction"], registry=r)
        self.checks = Counter(p + "checks", "Interval cross-checks against the node circuits, by status",
                              ["status"], registry=r)
        self.interval_energy_wh = Gauge(p + "interval_energy_wh", "Energy of the last checked interval",
                                        ["source", "direction"], registry=r)
        self.discrepancy_wh = Gauge(p + "discrepancy_wh", "Last checked interval: meter net minus circuits net",
                                    registry=r)
        self.discrepancy_percent = Gauge(p + "discrepancy_percent",
                                         "Last checked interval: |discrepancy| in % of the meter's import + export",
                                         registry=r)
        self.checked_interval_start_s = Gauge(p + "checked_interval_start_seconds",
                                              "Start of the last checked interval (Unix time)", registry=r)
