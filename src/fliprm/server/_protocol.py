"""uvicorn's h11 protocol and listening socket with the limits a public reward server needs.

**Request deadline.** uvicorn closes a kept-alive connection that stays idle
(``timeout_keep_alive``), but a client that connects and then sends its headers slowly, or
never, keeps its socket forever. Here every request must arrive whole (headers and body) within
``header_timeout`` of its first byte (of the connection, for the first request), or the
connection is closed.

**Connection cap.** 300 stalled sockets under a 256-descriptor limit used to exhaust the
process: ``accept()`` failed with EMFILE, and Python 3.11's asyncio then logs and re-schedules
the failure up to 2048 times per loop turn, so even ``/health`` stopped answering. Here the
listening socket counts the connections it hands out and never goes past the cap (which
:func:`connection_cap` keeps below the open-file limit): a new connection beyond it first evicts
the connection that has waited longest for its request (stalled in its headers, or idle
between requests); if every connection is running a request, the newcomer gets ``503`` and is
closed. EMFILE below the cap (descriptors held by the backend or the cache) is handled the
same way and never reaches asyncio.

**Write deadline.** A reply is written into the transport's buffer whole; a client that never
reads it leaves the buffer full, and uvicorn's close (idle timeout, end of response) waits for
that buffer to drain, forever: measured, readers that never read their 3 MB replies held the
connections and the buffered replies 45 s past the 15 s idle timeout. Here a connection whose
writing is paused (the buffer over its high-water mark) and whose client takes no byte of it
for ``write_timeout`` seconds is aborted, and its buffer dropped; a slow reader that keeps
reading is not.

**Drain.** At shutdown uvicorn closes idle kept-alive connections at once, so a request that a
client sends on one a moment later meets a closed socket. Here idle connections stay open for
``drain_grace`` seconds and such a request gets ``503`` with ``Retry-After``, which RL clients
retry elsewhere.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import socket
import time
from collections import Counter
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["ConnectionGate", "connection_cap", "gated_listener", "guarded_protocol"]

log = logging.getLogger("uvicorn.error")

_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)

_REFUSAL_BODY = b'{"detail":"too many connections"}'
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"retry-after: 1\r\nconnection: close\r\ncontent-length: "
    + str(len(_REFUSAL_BODY)).encode() + b"\r\n\r\n" + _REFUSAL_BODY
)


def connection_cap(max_connections: int | None) -> int:
    """``max_connections``, lowered so that the connections plus a reserve (the backend's own
    sockets, the cache, logs, the model file) fit in the soft open-file limit.

    >>> connection_cap(10)
    10
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    room = max(1, soft - max(32, soft // 4))
    return room if max_connections is None else max(1, min(max_connections, room))


class ConnectionGate:
    """The open connections of one server: the cap, eviction, and counters for ``/metrics``."""

    #: a connection this fresh is not evicted: its request is most likely on its way
    young_s = 0.05

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.protocols: set[Any] = set()
        #: accepted sockets whose protocol is not made yet (asyncio makes it a loop turn later)
        self.pending = 0
        self.accepted_at = 0.0
        #: connections the server closed, by reason (header_timeout, evicted, refused)
        self.closed: Counter[str] = Counter()

    @property
    def open(self) -> int:
        return len(self.protocols) + self.pending

    def make_room(self) -> bool:
        """Make a slot free: True if one may be free on a coming loop turn (an eviction is
        under way, or the newest connections are not set up or not heard from yet), False if
        every connection is running a request."""
        now = time.monotonic()
        if self.pending:
            if now - self.accepted_at < 1.0:
                return True  # set up on the next turn, then evictable if they wait
            self.pending = 0  # a transport that failed before connection_made
        if any(p._evicted for p in self.protocols):
            return True
        waiting = [p for p in self.protocols if p._waiting()]
        if not waiting:
            return False
        oldest = min(waiting, key=lambda p: p._since)
        if now - oldest._since < self.young_s:
            return True
        oldest._evicted = True
        self.closed["evicted"] += 1
        oldest.transport.abort()  # the socket is closed on the next loop turn
        return True


def _refuse(conn: socket.socket) -> None:
    """Answer 503 on a raw accepted socket and close it (no protocol, no app)."""
    try:
        conn.setblocking(False)
        try:
            conn.recv(65536)  # read what the client sent, so closing does not reset the 503
        except OSError:
            pass
        conn.send(_REFUSAL)
        conn.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    finally:
        conn.close()


class _GatedListener(socket.socket):
    """A listening socket whose ``accept`` keeps the open connections within the gate's cap."""

    gate: ConnectionGate
    _reserve: int | None

    def accept(self) -> tuple[socket.socket, Any]:  # type: ignore[override]
        gate = self.gate
        if gate.open >= gate.cap:
            if not gate.make_room():
                self._refuse_some()
            # asyncio reads BlockingIOError as "nothing to accept"; it tries again next turn
            raise BlockingIOError(errno.EAGAIN, "at the connection cap")
        try:
            conn, addr = super().accept()
        except OSError as exc:
            if exc.errno not in _OUT_OF_FDS:
                raise
            # Out of descriptors below the cap. Never let asyncio see it (Python 3.11 would log
            # and re-schedule it up to 2048 times per loop turn): evict, or refuse one
            # connection with the reserve descriptor so the backlog drains instead of spinning.
            if not gate.make_room():
                self._refuse_with_reserve()
            raise BlockingIOError(errno.EAGAIN, "out of file descriptors") from None
        gate.pending += 1
        gate.accepted_at = time.monotonic()
        return conn, addr

    def _refuse_some(self, at_most: int = 16) -> None:
        for _ in range(at_most):
            try:
                conn, _ = super().accept()
            except OSError as exc:
                if exc.errno in _OUT_OF_FDS:
                    self._refuse_with_reserve()
                return
            self.gate.closed["refused"] += 1
            _refuse(conn)

    def _refuse_with_reserve(self) -> None:
        if self._reserve is None:
            return
        os.close(self._reserve)
        self._reserve = None
        try:
            conn, _ = super().accept()
            self.gate.closed["refused"] += 1
            _refuse(conn)
        except OSError:
            pass
        finally:
            try:
                self._reserve = os.open(os.devnull, os.O_RDONLY)
            except OSError:
                log.warning("out of file descriptors: no reserve descriptor to refuse with")

    def close(self) -> None:
        if getattr(self, "_reserve", None) is not None:
            os.close(self._reserve)  # type: ignore[arg-type]
            self._reserve = None
        super().close()


def gated_listener(sock: socket.socket, gate: ConnectionGate) -> socket.socket:
    """``sock`` (bound, not yet listening) as a listening socket that obeys ``gate``."""
    if isinstance(sock, _GatedListener):
        sock.gate = gate
        return sock
    listener = _GatedListener(sock.family, sock.type, sock.proto, fileno=sock.detach())
    listener.gate = gate
    listener._reserve = os.open(os.devnull, os.O_RDONLY)
    return listener


def guarded_protocol(
    header_timeout: float,
    drain_grace: float = 2.0,
    gate: ConnectionGate | None = None,
    write_timeout: float | None = None,
) -> type[H11Protocol]:
    """An H11Protocol subclass with a request deadline, a write deadline (``None``: none), a
    503-on-drain window and (with ``gate``) a place in the server's connection count,
    evictable while it waits."""

    class GuardedH11Protocol(H11Protocol):
        _deadline: Any = None
        _write_deadline: Any = None
        _unsent = 0  # bytes buffered when the write deadline was armed
        _draining = False
        _evicted = False
        _since = 0.0

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if gate is not None:
                gate.pending = max(0, gate.pending - 1)
                gate.protocols.add(self)
            self._arm()
            inner = self.app

            async def app(scope: Any, receive: Any, send: Any) -> None:
                if self._draining:
                    await _unavailable(send)
                else:
                    await inner(scope, receive, send)

            self.app = app

        def _arm(self) -> None:
            if self._deadline is None:
                self._since = time.monotonic()
                self._deadline = self.loop.call_later(header_timeout, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                if gate is not None:
                    gate.closed["header_timeout"] += 1
                self.transport.close()

        def _idle(self) -> bool:
            """Between requests: none yet, or the last one answered."""
            return self.cycle is None or self.cycle.response_complete

        def _request_in(self) -> bool:
            """A request has arrived whole and the app is working on it."""
            return (self.cycle is not None and not self.cycle.response_complete
                    and not self.cycle.more_body)

        def _waiting(self) -> bool:
            """Waiting for a client (a request to arrive, or the next one): evictable."""
            return not self._evicted and not self._request_in()

        def data_received(self, data: bytes) -> None:
            if self._idle():
                self._arm()  # the first byte of a new request starts its clock
            super().data_received(data)
            if self._request_in():
                self._disarm()  # the whole request is in: the app's own timeouts apply now

        def pause_writing(self) -> None:
            super().pause_writing()
            if write_timeout is not None and self._write_deadline is None:
                self._arm_write_deadline()

        def _arm_write_deadline(self) -> None:
            self._unsent = self.transport.get_write_buffer_size()
            self._write_deadline = self.loop.call_later(write_timeout, self._write_stalled)

        def resume_writing(self) -> None:
            super().resume_writing()
            self._cancel_write_deadline()

        def _cancel_write_deadline(self) -> None:
            if self._write_deadline is not None:
                self._write_deadline.cancel()
                self._write_deadline = None

        def _write_stalled(self) -> None:
            self._write_deadline = None
            if self.transport.get_write_buffer_size() < self._unsent:
                self._arm_write_deadline()  # the client reads, slowly: give it another period
                return
            if gate is not None:
                gate.closed["write_timeout"] += 1
            # abort, not close: close would wait for the client to read the buffer
            self.transport.abort()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            self._cancel_write_deadline()
            if gate is not None:
                gate.protocols.discard(self)
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            self._disarm()
            self._since = time.monotonic()
            super().on_response_complete()
            # a pipelined next request already (partly) buffered: its clock starts now
            if not self.transport.is_closing() and not self._request_in() and (
                not self._idle() or self.conn.trailing_data[0]
            ):
                self._arm()

        def shutdown(self) -> None:
            if self._idle() and not self.transport.is_closing():
                self._draining = True
                self.loop.call_later(drain_grace, self._drained)
                return
            super().shutdown()

        def _drained(self) -> None:
            if not self.transport.is_closing():
                super().shutdown()

    return GuardedH11Protocol


async def _unavailable(send: Any) -> None:
    body = b'{"detail":"server is shutting down"}'
    await send({"type": "http.response.start", "status": 503, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"retry-after", b"5"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
