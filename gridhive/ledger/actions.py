"""What the pure core asks its service to do (LEDGER.md §12). Execute in order: a persist
action must be durable before any later action runs."""
from dataclasses import dataclass


@dataclass(frozen=True)
class Broadcast:
    data: bytes
    exclude: str | None = None   # the peer a relayed message came from


@dataclass(frozen=True)
class Send:
    peer: str
    data: bytes


@dataclass(frozen=True)
class Schedule:
    at_ms: int                   # local clock
    timer: tuple                 # (kind, height, round), handed back to on_timer


@dataclass(frozen=True)
class PersistSigned:
    record: dict                 # the last-signed record (§8.1)


@dataclass(frozen=True)
class CommitBlock:
    height: int
    block: dict
    commit: list                 # precommits forming the certificate


@dataclass(frozen=True)
class ServeBlocks:
    peer: str
    from_height: int
    max_blocks: int


@dataclass(frozen=True)
class ServeSnapshot:
    peer: str
    above_height: int            # the peer's last final height: send the newest snapshot above it,
    from_height: int             # else blocks from this height as ServeBlocks does
    max_blocks: int


@dataclass(frozen=True)
class InstallSnapshot:
    header: dict                 # the final header of the snapshot's height
    commit: list                 # its commit certificate
    snapshot: bytes              # canonical snapshot (§5.3), already verified against the header


@dataclass(frozen=True)
class Halt:
    reason: str


Action = Broadcast | Send | Schedule | PersistSigned | CommitBlock | ServeBlocks | ServeSnapshot | InstallSnapshot | Halt
