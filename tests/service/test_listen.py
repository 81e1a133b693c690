"""service/listen.py: one SO_REUSEPORT socket per API process, made from the parent's
placeholder when it is pickled to a spawned worker."""

from __future__ import annotations

import socket
from multiprocessing.reduction import ForkingPickler

import pytest

from service import listen

pytestmark = pytest.mark.skipif(not listen.supported(), reason="no SO_REUSEPORT here")


def _accept_all(sock: socket.socket) -> int:
    n = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return n
        conn.close()
        n += 1


def test_each_worker_listens_on_its_own_socket_and_a_burst_of_connections_is_spread() -> None:
    held = listen.placeholder("127.0.0.1", 0)
    port = held.getsockname()[1]
    # What uvicorn's supervisor does with the socket list: pickled to each spawned process.
    workers = [ForkingPickler.loads(ForkingPickler.dumps(held)) for _ in range(2)]
    try:
        for w in workers:
            assert w.getsockname()[1] == port and w.fileno() != held.fileno()
            assert w.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
            w.listen(128)
            w.setblocking(False)
        # The placeholder never listens: a connection is never queued where nobody accepts.
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(64)]
        counts = [_accept_all(w) for w in workers]
        for c in clients:
            c.close()
        # The kernel hashes each connection to one socket: both get a share (a shared socket
        # gave one process 53 of 64 in bench/peer.py's burst); under 16 of 64 has p < 1e-4.
        assert sum(counts) == 64 and min(counts) >= 16, counts
    finally:
        for s in (held, *workers):
            s.close()


def test_an_address_in_use_is_refused_whoever_listens_there() -> None:
    plain = socket.create_server(("127.0.0.1", 0))
    with pytest.raises(OSError):
        listen.placeholder("127.0.0.1", plain.getsockname()[1])
    plain.close()
    # Another server of ours (its workers listen with SO_REUSEPORT) is refused as well: the
    # placeholder would otherwise join its group and split its traffic.
    held = listen.placeholder("127.0.0.1", 0)
    worker = ForkingPickler.loads(ForkingPickler.dumps(held))
    worker.listen(8)
    with pytest.raises(OSError):
        listen.placeholder("127.0.0.1", held.getsockname()[1])
    worker.close()
    held.close()
