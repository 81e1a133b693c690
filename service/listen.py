"""One listening socket per API process (SO_REUSEPORT), so the kernel spreads connections.

uvicorn's several workers share one listening socket, and whichever process wakes first
accepts every connection queued at that moment (its event loop accepts in a loop). A client
that opens its keep-alive connections in a burst, as a load balancer or a pool does, lands most
of them in one process: with 2 processes and 32 connections we saw 53:11, 40:24 and 42:22
splits of the sockets, one process overloaded while the other idled.

With ``SO_REUSEPORT`` each process listens on a socket of its own bound to the same address, and
the kernel hashes each new connection to one of them, so each process gets its share whatever
the timing. This module keeps uvicorn's supervisor (health pings, restarts) as it is: the parent
holds a *placeholder*, a bound socket that never listens, and what travels to each spawned
worker is not that socket but the recipe for a new one (``__reduce__``), bound with
``SO_REUSEPORT`` in the worker, where uvicorn then listens on it.

Off unless ``RCS_API_REUSE_PORT=true``: it spreads the sockets, but an A/B of bench/peer.py with 2
processes (docs/benchmarks/peer.md) found no reliable throughput difference on a 2-core machine.

Caveat (the kernel's): connections still waiting in a worker's own queue when that worker dies
are reset rather than taken by a sibling; the client retries them as it retries any reset.
"""

from __future__ import annotations

import socket
from typing import Any


def supported() -> bool:
    return hasattr(socket, "SO_REUSEPORT")


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _bound(host: str, port: int, reuse_port: bool) -> socket.socket:
    sock = socket.socket(_family(host), socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def worker_socket(host: str, port: int) -> socket.socket:
    """In a worker: its own socket on the shared address (uvicorn calls ``listen`` on it)."""
    sock = _bound(host, port, reuse_port=True)
    sock.set_inheritable(True)
    return sock


class Placeholder(socket.socket):
    """The parent's socket: it holds the address and never listens; pickled (to a spawned
    worker) it becomes that worker's own ``SO_REUSEPORT`` socket on the same address."""

    def __reduce__(self) -> tuple[Any, ...]:
        host, port = self.getsockname()[:2]
        return (worker_socket, (host, port))


def placeholder(host: str, port: int) -> Placeholder:
    """The parent's placeholder on (host, port); ``OSError`` when anything listens there
    already, another server of ours included (a plain bind is tried first, which a listening
    socket refuses, ``SO_REUSEPORT`` or not)."""
    _bound(host, port, reuse_port=False).close()
    probe = _bound(host, port, reuse_port=True)
    return Placeholder(probe.family, probe.type, probe.proto, fileno=probe.detach())
