"""The central controller: gateway uplink ingest and the fleet registry (docs/CONTROLLER.md).

Pure cores: `uplink` (format and validation), `registry` (record rules and states). Services:
`store` (SQLite / PostgreSQL), `service.ControllerService` (MQTT), `cli.app` (`gridhive ctl`).
"""
