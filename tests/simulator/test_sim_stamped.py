"""The simulator's TCP transport: kernel receive stamps, buffered writes, close, abort, EOF."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from simulator import stamped
from simulator.engine import MediaEngine
from tests.simulator.conftest import WAIT, wait_until
from tests.simulator.test_sim_wsclient import Client, Loop, RawServer
from tests.wsframes import frame

LINUX = sys.platform == "linux"


class Recording:
    """A StampedProtocol that keeps everything it is told."""

    def __init__(self) -> None:
        self.transport: stamped.StampedTransport | None = None
        self.reads: list[tuple[bytes, float, float]] = []  # data, received_at, time it was handled
        self.eof = threading.Event()
        self.lost: list[Exception | None] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, stamped.StampedTransport)
        self.transport = transport

    def data_received_at(self, data: bytes, received_at: float) -> None:
        self.reads.append((data, received_at, time.monotonic()))

    def eof_received(self) -> bool | None:
        self.eof.set()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)

    @property
    def received(self) -> bytes:
        return b"".join(data for data, _, _ in self.reads)


@pytest.fixture
def wsloop() -> Iterator[Loop]:
    loop = Loop()
    yield loop
    loop.close()


@pytest.fixture
def server() -> Iterator[RawServer]:
    s = RawServer()
    yield s
    s.close()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    s = socket.create_server(("127.0.0.1", 0))
    s.settimeout(WAIT)
    yield s
    s.close()


@pytest.fixture
def connect(wsloop: Loop, listener: socket.socket) -> Iterator[Callable[[], tuple[Recording, socket.socket]]]:
    """Opens StampedTransports on the loop, each with its peer's socket; all closed at the end."""
    made: list[tuple[Recording, socket.socket]] = []

    def open_one() -> tuple[Recording, socket.socket]:
        protocol = Recording()
        future = wsloop.engine.submit(stamped.connect("127.0.0.1", listener.getsockname()[1], lambda: protocol))
        peer, _ = listener.accept()
        peer.settimeout(WAIT)
        assert future.result(WAIT) is protocol
        made.append((protocol, peer))
        return protocol, peer

    yield open_one
    wsloop.run(lambda: [p.transport.abort() for p, _ in made if p.transport is not None])
    for _, peer in made:
        peer.close()


def block_loop(engine: MediaEngine, seconds: float) -> None:
    """Keep the loop busy for `seconds`; returns once it is."""
    started = threading.Event()

    def busy() -> None:
        started.set()
        time.sleep(seconds)

    engine.call_soon(busy)
    assert started.wait(WAIT)


@pytest.mark.skipif(not LINUX, reason="kernel receive stamps are read on Linux only")
def test_reads_carry_the_kernels_arrival_time_not_the_busy_loops(wsloop, connect):
    protocol, peer = connect()
    assert protocol.transport is not None and protocol.transport.stamped
    block_loop(wsloop.engine, 0.3)
    sent_at = time.monotonic()
    peer.sendall(b"hello")
    wait_until(lambda: protocol.reads, what="the read")
    (data, received_at, handled_at), = protocol.reads
    assert data == b"hello"
    assert handled_at - sent_at > 0.2  # the loop only got to it after its stall
    assert -0.001 < received_at - sent_at < 0.02  # yet it is stamped when it arrived
    peer.close()


@pytest.mark.skipif(not LINUX, reason="kernel receive stamps are read on Linux only")
def test_websocket_messages_carry_their_arrival_time(wsloop: Loop, server: RawServer) -> None:
    client = Client(wsloop, server)
    stamps: list[float] = []
    client.on_loop(lambda: client.ws.attach(lambda _m: stamps.append(client.ws.received_at), client.closed.set))
    block_loop(wsloop.engine, 0.3)
    sent_at = time.monotonic()
    client.peer.send_frame(0x1, b'{"event":"media"}')
    wait_until(lambda: stamps, what="the message")
    assert -0.001 < stamps[0] - sent_at < 0.02


def test_a_write_the_kernel_cannot_take_at_once_is_flushed_in_order_before_close(wsloop, connect):
    protocol, peer = connect()
    data = bytes(range(256)) * (16 * 1024)  # 4 MiB: far more than the socket buffers hold
    transport = protocol.transport
    assert transport is not None

    def write_then_close() -> int:
        transport.write(data)
        buffered = transport.get_write_buffer_size()
        transport.close()
        return buffered

    assert wsloop.run(write_then_close) > 0  # some of it had to wait for the peer
    got = bytearray()
    while chunk := peer.recv(1 << 20):
        got += chunk
    assert bytes(got) == data  # all of it, in order, then the end of the stream
    wait_until(lambda: protocol.lost, what="connection_lost")
    assert protocol.lost == [None]
    peer.close()


def test_abort_drops_what_is_buffered_and_reports_the_loss_once(wsloop, connect):
    protocol, peer = connect()
    transport = protocol.transport
    assert transport is not None

    def write_then_abort() -> None:
        transport.write(b"x" * (8 << 20))
        transport.abort()
        transport.abort()
        transport.close()
        transport.write(b"ignored")

    wsloop.run(write_then_abort)
    wait_until(lambda: protocol.lost, what="connection_lost")
    got = 0
    while chunk := peer.recv(1 << 20):  # what the kernel already took, then the end
        got += len(chunk)
    assert got < 8 << 20
    time.sleep(0.05)
    assert protocol.lost == [None]
    assert wsloop.run(transport.is_closing)
    peer.close()


def test_the_peers_end_of_stream_is_reported_then_the_connection_closes(wsloop, connect):
    protocol, peer = connect()
    peer.sendall(b"last words")
    peer.shutdown(socket.SHUT_WR)
    assert protocol.eof.wait(WAIT)
    wait_until(lambda: protocol.lost, what="connection_lost")
    assert protocol.received == b"last words"
    assert protocol.lost == [None]
    assert peer.recv(100) == b""  # our side closed too
    peer.close()


def test_a_reset_connection_is_lost_with_its_error(wsloop, connect):
    protocol, peer = connect()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    peer.close()  # linger 0: a reset instead of a FIN
    wait_until(lambda: protocol.lost, what="connection_lost")
    assert isinstance(protocol.lost[0], ConnectionResetError)
    assert not protocol.eof.is_set()


def test_connecting_to_a_closed_port_raises(wsloop):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: the connect is refused
        future = wsloop.engine.submit(stamped.connect("127.0.0.1", port, Recording))
        with pytest.raises(ConnectionRefusedError):
            future.result(WAIT)


def test_extra_info_names_the_socket_and_its_ends(wsloop, connect, listener):
    protocol, peer = connect()
    transport = protocol.transport
    assert transport is not None
    assert wsloop.run(lambda: transport.get_extra_info("peername")) == listener.getsockname()
    assert wsloop.run(lambda: transport.get_extra_info("sockname")) == peer.getpeername()
    assert wsloop.run(lambda: transport.get_extra_info("socket")).fileno() >= 0
    assert wsloop.run(lambda: transport.get_extra_info("nothing", 7)) == 7
    peer.close()


def test_frames_split_across_packets_are_stamped_by_their_last_packet(wsloop: Loop, server: RawServer) -> None:
    client = Client(wsloop, server)
    stamps: list[float] = []
    client.on_loop(lambda: client.ws.attach(lambda _m: stamps.append(client.ws.received_at), client.closed.set))
    whole = frame(0x1, b'{"event":"media"}')
    client.peer.sock.sendall(whole[:5])
    time.sleep(0.1)
    sent_at = time.monotonic()
    client.peer.sock.sendall(whole[5:])
    wait_until(lambda: stamps, what="the message")
    assert stamps[0] >= sent_at - 0.001  # complete only when its last byte came
