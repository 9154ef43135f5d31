"""Households' consent to share their own series with a recipient (the DSO, a researcher, ...).

An append-only log of grants and revocations; the latest entry for (member, recipient, purpose)
at a given time decides. Stored as JSON lines so every change stays on record. Pure apart from
`load`/`save`, which read and write that file.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

PURPOSES = ("metering", "schedule", "flexibility")


@dataclass(frozen=True)
class ConsentEntry:
    member_id: str
    recipient: str   # e.g. the DSO's domain or "dso"
    purpose: str     # one of PURPOSES
    granted: bool    # False = revoked
    ts_ms: int       # when the household said so
    note: str = ""   # how it was recorded (signed form, panel click, ...)


class ConsentRegistry:
    def __init__(self, entries: Iterable[ConsentEntry] = ()):
        self._entries: list[ConsentEntry] = []
        for entry in entries:
            self._append(entry)

    @property
    def entries(self) -> tuple[ConsentEntry, ...]:
        return tuple(self._entries)

    def grant(self, member_id: str, recipient: str, purpose: str, ts_ms: int,
              note: str = "") -> ConsentEntry:
        return self._append(ConsentEntry(member_id, recipient, purpose, True, ts_ms, note))

    def revoke(self, member_id: str, recipient: str, purpose: str, ts_ms: int,
               note: str = "") -> ConsentEntry:
        return self._append(ConsentEntry(member_id, recipient, purpose, False, ts_ms, note))

    def allows(self, member_id: str, recipient: str, purpose: str, at_ms: int) -> bool:
        """Whether the household's latest say at or before `at_ms` is a grant."""
        latest = None
        for entry in self._entries:
            if ((entry.member_id, entry.recipient, entry.purpose) == (member_id, recipient, purpose)
                    and entry.ts_ms <= at_ms):
                latest = entry  # entries are kept in time order
        return bool(latest and latest.granted)

    def consenting(self, member_ids: Iterable[str], recipient: str, purpose: str,
                   at_ms: int) -> set[str]:
        return {m for m in member_ids if self.allows(m, recipient, purpose, at_ms)}

    def _append(self, entry: ConsentEntry) -> ConsentEntry:
        if entry.purpose not in PURPOSES:
            raise ValueError(f"purpose must be one of {PURPOSES}, got {entry.purpose!r}")
        if type(entry.ts_ms) is not int or entry.ts_ms < 0:
            raise ValueError("ts_ms must be a non-negative integer")
        if not entry.member_id or not entry.recipient:
            raise ValueError("member_id and recipient are required")
        if self._entries and entry.ts_ms < self._entries[-1].ts_ms:
            raise ValueError("consent entries must be recorded in time order")
        self._entries.append(entry)
        return entry

    def save(self, path: Path) -> None:
        path.write_text("".join(json.dumps(asdict(e), sort_keys=True) + "\n"
                                for e in self._entries))

    @classmethod
    def load(cls, path: Path) -> ConsentRegistry:
        if not path.exists():
            return cls()
        return cls(ConsentEntry(**json.loads(line))
                   for line in path.read_text().splitlines() if line.strip())
