"""Equivocation evidence: build, check, pool (LEDGER.md §7)."""
from dataclasses import dataclass

from .codec import hash_value
from .messages import MsgError, check_signed, signer_of, step_of


@dataclass(frozen=True)
class EvidenceInfo:
    offender: str
    height: int
    round: int
    step: str
    key: str   # "offender:height:round:step", at most one record per key on chain
    id: str


def make_evidence(a: dict, b: dict) -> dict:
    """Evidence from two conflicting signed messages; `a`/`b` ordered by hash so every node builds the same bytes."""
    a, b = sorted((a, b), key=hash_value)
    kind = "duplicate_proposal" if step_of(a) == "proposal" else "duplicate_vote"
    return {"kind": kind, "a": a, "b": b}


def check_evidence(ev, chain_id: str) -> EvidenceInfo:
    """Both messages valid, same signer and (height, round, step), different content; raises MsgError."""
    if type(ev) is not dict or set(ev) != {"kind", "a", "b"}:
        raise MsgError("invalid_evidence", "shape")
    a, b = ev["a"], ev["b"]
    check_signed(a, chain_id)
    check_signed(b, chain_id)
    where = (signer_of(a), a["height"], a["round"], step_of(a))
    if where != (signer_of(b), b["height"], b["round"], step_of(b)):
        raise MsgError("invalid_evidence", "messages are not for the same signer and step")
    if a == b or [a, b] != sorted((a, b), key=hash_value):
        raise MsgError("invalid_evidence", "identical or unordered")
    kind = "duplicate_proposal" if where[3] == "proposal" else "duplicate_vote"
    if ev["kind"] != kind:
        raise MsgError("invalid_evidence", "kind")
    return EvidenceInfo(*where, key="%s:%d:%d:%s" % where, id=hash_value(ev))


class EvidencePool:
    """Evidence a node has seen and not yet seen committed; bounded, one item per key."""

    def __init__(self, chain_id: str, max_items: int = 256):
        self.chain_id = chain_id
        self.max_items = max_items
        self._items: dict[str, tuple[EvidenceInfo, dict]] = {}

    def __len__(self) -> int:
        return len(self._items)

    def add(self, ev: dict) -> bool:
        info = check_evidence(ev, self.chain_id)
        if info.key in self._items or len(self._items) >= self.max_items:
            return False
        self._items[info.key] = (info, ev)
        return True

    def pending(self, limit: int) -> list[dict]:
        return [ev for _, ev in list(self._items.values())[:limit]]

    def prune(self, useful) -> None:
        """Keep only items for which `useful(info)` holds (drops recorded, expired, moot ones)."""
        self._items = {k: item for k, item in self._items.items() if useful(item[0])}
