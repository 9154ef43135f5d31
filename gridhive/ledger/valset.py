"""A validator set: voting power, quorum arithmetic and round-robin proposers (LEDGER.md §6.1)."""
from .codec import hash_value


class ValidatorSet:
    def __init__(self, powers: dict[str, int]):
        if not powers or any(type(p) is not int or p < 1 for p in powers.values()):
            raise ValueError("a validator set needs at least one validator, each with power >= 1")
        self.powers = dict(powers)
        self.order = sorted(powers)
        self.total = sum(powers.values())
        self.hash = hash_value([[pk, powers[pk]] for pk in self.order])

    def __contains__(self, pubkey: str) -> bool:
        return pubkey in self.powers

    def __len__(self) -> int:
        return len(self.order)

    def proposer(self, height: int, round_: int) -> str:
        return self.order[(height + round_) % len(self.order)]

    def power_of(self, pubkeys) -> int:
        return sum(self.powers.get(pk, 0) for pk in set(pubkeys))

    def is_quorum(self, power: int) -> bool:
        """Strictly more than 2/3 of the total power ([TM] '2f+1')."""
        return 3 * power > 2 * self.total

    def is_one_third(self, power: int) -> bool:
        """Strictly more than 1/3 of the total power ([TM] 'f+1')."""
        return 3 * power > self.total
