"""Canonical encoding: sorted-key compact JSON of ints, strings, lists, objects and null.

Equal values give equal bytes on every platform, so validators can hash and compare clearing
results and settlements. Floats are refused: they have no place in market data.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from enum import Enum

from .model import MarketError


def to_plain(value):
    """NamedTuples and dataclasses become objects (their init fields), tuples become lists."""
    if value is None or type(value) is int or type(value) is str:
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return {name: to_plain(getattr(value, name)) for name in value._fields}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name))
                for f in dataclasses.fields(value) if f.init}
    if isinstance(value, (list, tuple)):
        return [to_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): to_plain(item) for key, item in value.items()}
    raise TypeError(f"cannot encode {type(value).__name__} canonically")


def canonical_bytes(value) -> bytes:
    return json.dumps(to_plain(value), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True, allow_nan=False).encode("ascii")


def digest(value) -> str:
    """SHA-256 of the canonical bytes, hex."""
    return hashlib.sha256(canonical_bytes(value)).hexdigest()


def from_plain(cls, data):
    """Rebuild a NamedTuple or dataclass (e.g. Order, EnergyRequest, Community) with strict types.

    Raises MarketError naming the field, before any value-level validation.
    """
    if not isinstance(data, dict):
        raise MarketError(cls.__name__, "must be a JSON object")
    hints = typing.get_type_hints(cls)
    names = (cls._fields if hasattr(cls, "_fields")
             else [f.name for f in dataclasses.fields(cls) if f.init])
    unknown = set(data) - set(names)
    if unknown:
        raise MarketError(sorted(unknown)[0], "unknown field", cls.__name__)
    kwargs = {}
    for name in names:
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], name, cls.__name__)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise MarketError(cls.__name__, str(exc)) from None


def _coerce(hint, value, name: str, subject: str):
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        (hint,) = [h for h in typing.get_args(hint) if h is not type(None)]
        return _coerce(hint, value, name, subject)
    if origin is tuple:
        if not isinstance(value, list):
            raise MarketError(name, "must be a list", subject)
        item_hint = typing.get_args(hint)[0]
        return tuple(_coerce(item_hint, item, name, subject) for item in value)
    if isinstance(hint, type) and issubclass(hint, Enum):
        try:
            return hint(value)
        except ValueError:
            raise MarketError(name, f"must be one of {[e.value for e in hint]}", subject) from None
    if hint is bool:
        if type(value) is not int or value not in (0, 1):
            raise MarketError(name, "must be 0 or 1", subject)
        return bool(value)
    if hint in (int, str):
        if type(value) is not hint:
            raise MarketError(name, f"must be {hint.__name__}", subject)
        return value
    if dataclasses.is_dataclass(hint) or hasattr(hint, "_fields"):
        return from_plain(hint, value)
    raise TypeError(f"{subject}.{name}: no decoder for {hint}")
