"""The gridhive gateway service: ingest, storage, relay commands, Home Assistant, uplink.

Pure cores: config (gateway.toml), ingest (verdicts), energy (interval split), homeassistant
(discovery payloads), uplink.InflightWindow, mosquitto (broker files). Services around them:
storage (SQLite), mqtt (paho), service.Gateway (the asyncio process), http (Starlette API).
docs/GATEWAY.md describes how to run it; docs/PROTOCOL.md "Uplink" the controller interface.
"""
