"""LEDGER.md §13 (links): frames, the mutual handshake and sealed frames, over real loopback TCP."""
import asyncio

import pytest

from gridhive.ledger.crypto import SigningKey
from gridhive.ledger.p2p import LinkError, Session, frame, handshake, pack, read_frame, unpack

CHAIN = "p2p-test"
A, B, STRANGER = SigningKey.derive("p2p/a"), SigningKey.derive("p2p/b"), SigningKey.derive("p2p/stranger")
KNOWN = {A.public_hex, B.public_hex}


class Recorder:
    """Wraps a StreamWriter and keeps every byte written (to replay a handshake later)."""

    def __init__(self, writer):
        self.writer, self.sent = writer, bytearray()

    def write(self, data):
        self.sent += data
        self.writer.write(data)


async def pair(client_key=A, client_chain=CHAIN, server_allowed=KNOWN.__contains__, client_writer=None):
    """Handshake a client against a server on loopback; returns (client result, server result)."""
    server_result = asyncio.get_running_loop().create_future()

    async def on_conn(reader, writer):
        try:
            server_result.set_result(await handshake(reader, writer, B, CHAIN, server_allowed))
        except LinkError as exc:
            server_result.set_result(exc)
            writer.close()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
    try:
        client = await asyncio.wait_for(handshake(reader, client_writer(writer) if client_writer else writer,
                                                  client_key, client_chain, KNOWN.__contains__), 5)
    except (LinkError, asyncio.IncompleteReadError, ConnectionError) as exc:
        client = exc
    result = await asyncio.wait_for(server_result, 5)
    writer.close()
    server.close()
    return client, result


def test_both_sides_learn_the_others_validator_key_and_share_sealed_frames():
    async def main():
        (peer_of_a, sa), (peer_of_b, sb) = await pair()
        assert (peer_of_a, peer_of_b) == (B.public_hex, A.public_hex)
        for payload in (b"", b"vote", b"x" * 100_000):
            assert sb.open(sa.seal(payload)) == payload
            assert sa.open(sb.seal(payload)) == payload
    asyncio.run(main())


@pytest.mark.parametrize("case, reason", [("stranger", "unknown_peer"), ("other_chain", "wrong_chain")])
def test_unknown_keys_and_other_chains_are_refused(case, reason):
    async def main():
        kw = {"client_key": STRANGER} if case == "stranger" else {"client_chain": "other"}
        _, server = await pair(**kw)
        assert isinstance(server, LinkError) and server.reason == reason
    asyncio.run(main())


def test_a_recorded_handshake_never_authenticates_again():
    """The server's fresh ephemeral key is the challenge: the replayed auth is sealed and signed
    for a session that no longer exists."""
    async def main():
        recorded = []
        await pair(client_writer=lambda w: recorded.append(Recorder(w)) or recorded[-1])
        replay = bytes(recorded[0].sent)
        server_result = asyncio.get_running_loop().create_future()

        async def on_conn(reader, writer):
            try:
                server_result.set_result(await handshake(reader, writer, B, CHAIN, KNOWN.__contains__))
            except LinkError as exc:
                server_result.set_result(exc)

        server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        writer.write(replay)
        result = await asyncio.wait_for(server_result, 5)
        assert isinstance(result, LinkError) and result.reason == "bad_handshake"
        writer.close()
        server.close()
    asyncio.run(main())


def test_sealed_frames_reject_replay_forgery_and_gaps():
    a, b = Session(b"k" * 32, b"l" * 32), Session(b"l" * 32, b"k" * 32)
    first, second = a.seal(b"one"), a.seal(b"two")
    assert b.open(first) == b"one"
    with pytest.raises(LinkError) as exc:
        b.open(first)
    assert exc.value.reason == "replayed_frame"
    forged = second[:-1] + bytes([second[-1] ^ 1])
    with pytest.raises(LinkError) as exc:
        b.open(forged)
    assert exc.value.reason == "bad_frame"
    third = a.seal(b"three")
    with pytest.raises(LinkError) as exc:
        b.open(third)                                   # "two" was never delivered
    assert exc.value.reason == "bad_frame"
    assert b.open(second) == b"two" and b.open(third) == b"three"


def test_a_frame_longer_than_the_limit_is_refused_before_it_is_read():
    async def main():
        reader = asyncio.StreamReader()
        reader.feed_data(frame(b"x" * 10) + (2**31).to_bytes(4, "big"))
        assert await read_frame(reader, 10) == b"x" * 10
        with pytest.raises(LinkError) as exc:
            await read_frame(reader, 10)
        assert exc.value.reason == "oversized"
    asyncio.run(main())


def test_a_frame_carries_a_batch_of_messages_and_a_torn_batch_is_refused():
    batch = [b"vote", b"", b"x" * 1000]
    assert unpack(pack(batch)) == batch
    with pytest.raises(LinkError) as exc:
        unpack(pack(batch)[:-1])
    assert exc.value.reason == "bad_frame"
