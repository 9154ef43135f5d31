"""State sync (LEDGER.md §8.4): a node far behind fetches a peer's newest state snapshot in
chunks and verifies it against the final header it names before it jumps to that height. Pure:
the node feeds chunks in; the service stores and serves the bytes."""
from .codec import CodecError, decode, digest, encode_unchecked
from .consensus import verify_commit
from .messages import MsgError
from .state import HEADER_KEYS, TABLES, BlockError, State
from .valset import ValidatorSet

MAX_SNAPSHOT_BYTES = 256 * 1024 * 1024     # what a node assembles in memory from one peer
MAX_CHUNKS = 65_536
_SNAPSHOT_KEYS = {"height", "app_hash", "block_hash", "time_ms", "tables"}


class SnapshotError(ValueError):
    """A snapshot that cannot be installed; the node counts it as `bad_snapshot`."""


def chunk_msgs(header: bytes, commit: bytes, snapshot: bytes, chunk_bytes: int) -> list[bytes]:
    """The `snapshot_chunk` envelopes of a stored snapshot (canonical: keys in sorted order). Each
    carries the final header and its commit, so chunks need no order and no other message."""
    text = snapshot.decode()
    total = max(1, -(-len(text) // chunk_bytes))
    return [b'{"commit":' + commit + b',"data":' + encode_unchecked(text[i * chunk_bytes:(i + 1) * chunk_bytes])
            + b',"header":' + header + b',"index":' + str(i).encode() + b',"kind":"snapshot_chunk","total":'
            + str(total).encode() + b"}" for i in range(total)]


class Assembly:
    """The chunks of one snapshot (named by its header) as they come in, any order."""

    def __init__(self, header: dict, commit: list, total: int):
        if total > MAX_CHUNKS:
            raise SnapshotError(f"{total} chunks")
        self.header, self.commit, self.total = header, commit, total
        self.block_hash = digest(encode_unchecked(header))
        self._parts: dict[int, str] = {}
        self._chars = 0

    def add(self, index: int, data: str) -> bool:
        """Keep a chunk; True once all are in. Raises SnapshotError past MAX_SNAPSHOT_BYTES."""
        if index not in self._parts:
            self._chars += len(data)
            if self._chars > MAX_SNAPSHOT_BYTES:
                raise SnapshotError("larger than a node assembles")
            self._parts[index] = data
        return len(self._parts) == self.total

    def snapshot_bytes(self) -> bytes:
        try:
            return "".join(self._parts[i] for i in range(self.total)).encode("ascii")
        except UnicodeEncodeError:
            raise SnapshotError("not ASCII") from None


def verify(genesis: dict, rules, trusted: ValidatorSet, header: dict, commit: list, data: bytes) -> State:
    """The state a complete snapshot stands for, if it is the one its header commits to (§8.4):
    the header is final — a quorum of the validator set it names (`validators_hash`, which must
    be the snapshot's own set, so no other proof of that set is needed) precommitted it — and
    that set is the set this node trusts, or more than a third of the trusted power signed the
    commit (as a light client's skipping verification: some trusted, honest validator vouches
    for the new set); the tables hash to the header's `snapshot_hash` and the app hash matches."""
    try:
        snapshot = decode(data, MAX_SNAPSHOT_BYTES)
    except CodecError as exc:
        raise SnapshotError(f"not canonical JSON: {exc}") from None
    if (type(snapshot) is not dict or set(snapshot) != _SNAPSHOT_KEYS or type(snapshot["tables"]) is not dict
            or set(snapshot["tables"]) != set(TABLES) or not all(type(t) is dict for t in snapshot["tables"].values())):
        raise SnapshotError("shape")
    if type(header) is not dict or set(header) != HEADER_KEYS or not header["snapshot_hash"]:
        raise SnapshotError("header")
    try:
        validators = ValidatorSet(snapshot["tables"]["validators"])
    except ValueError as exc:
        raise SnapshotError(f"validators: {exc}") from None
    if validators.hash != header["validators_hash"]:
        raise SnapshotError("the validator set changed in the snapshot's block")   # sync its blocks instead
    try:
        verify_commit({"header": header}, commit, validators, genesis["chain_id"])
    except MsgError as exc:
        raise SnapshotError(f"commit: {exc}") from None
    signers = {vote["validator"] for vote in commit}
    if validators.hash != trusted.hash and not trusted.is_one_third(trusted.power_of(signers)):
        raise SnapshotError("too few validators this node trusts signed it")
    try:
        return State.from_snapshot(genesis, rules, snapshot, header)
    except BlockError as exc:
        raise SnapshotError(str(exc)) from None
