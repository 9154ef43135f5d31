"""Double-sign protection (LEDGER.md §8.1), after CometBFT's FilePV: a last-signed record that
only moves forward in (height, round, step) and carries the lock, persisted before sending."""
from .crypto import SigningKey
from .messages import STEP_NUMBER, sign_with, step_of


class PrivValidator:
    def __init__(self, key: SigningKey, record: dict | None = None):
        self.key = key
        self.pubkey = key.public_hex
        self.record = record

    def _last(self) -> tuple[int, int, int]:
        r = self.record
        return (r["height"], r["round"], r["step"]) if r else (-1, -1, -1)

    def lock_for(self, height: int) -> dict | None:
        lock = self.record and self.record["lock"]
        return lock if lock and lock["height"] == height else None

    def sign(self, unsigned: dict, lock_block: dict | None = None,
             lock_pol: list[dict] = ()) -> tuple[dict | None, dict | None]:
        """Sign a vote or proposal. Returns (message, record to persist before sending).
        A lower (h, r, step) than last time is refused: (None, None). The same (h, r, step)
        returns what was signed then, never a second, conflicting message: (old, None).
        `lock_block` with `lock_pol` (the quorum of prevotes that justified it) becomes the lock."""
        hrs = (unsigned["height"], unsigned["round"], STEP_NUMBER[step_of(unsigned)])
        last = self._last()
        if hrs < last:
            return None, None
        if hrs == last:
            return self.record["msg"], None
        msg = sign_with(self.key, unsigned)
        lock = self.lock_for(hrs[0])
        if lock_block is not None:
            lock = {"height": hrs[0], "round": hrs[1], "block": lock_block, "pol": list(lock_pol)}
        previous = self.record
        self.record = {"height": hrs[0], "round": hrs[1], "step": hrs[2], "msg": msg, "lock": lock}
        # A precommit keeps the prevote of its round: restarted, the node must still send it,
        # as peers that missed it may need it for a quorum; nothing else could resend it (§8.1).
        if hrs[2] == STEP_NUMBER["precommit"] and last == (hrs[0], hrs[1], STEP_NUMBER["prevote"]):
            self.record["prevote"] = previous["msg"]
        return msg, self.record

    def round_messages(self) -> list[dict]:
        """The votes of the record's round that a restarted node sends again: its last one and,
        after a precommit, the prevote before it."""
        r = self.record
        if not r or r["step"] == STEP_NUMBER["proposal"]:
            return []
        return [r["prevote"], r["msg"]] if r.get("prevote") else [r["msg"]]
