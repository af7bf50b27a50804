"""uvicorn's h11 protocol with the timeouts a public reward server needs.

uvicorn closes a kept-alive connection that stays idle (``timeout_keep_alive``), but a client
that connects and then sends its headers slowly, or never, keeps its socket forever: 300 such
sockets exhaust a 256-descriptor limit and even ``/health`` stops answering. Here every request
must arrive whole (headers and body) within ``header_timeout`` of its first byte (or of the
connection), or the connection is closed.

At shutdown uvicorn closes idle kept-alive connections at once, so a request that a client
sends on one a moment later meets a closed socket. Here idle connections stay open for
``drain_grace`` seconds and such a request gets ``503`` with ``Retry-After``, which RL clients
retry elsewhere.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["guarded_protocol"]


def guarded_protocol(header_timeout: float, drain_grace: float = 2.0) -> type[H11Protocol]:
    """An H11Protocol subclass with a request deadline and a 503-on-drain window."""

    class GuardedH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _draining = False

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
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
                self._deadline = self.loop.call_later(header_timeout, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.close()

        def _idle(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def data_received(self, data: bytes) -> None:
            if self._idle():
                self._arm()  # the first byte of a new request starts its clock
            super().data_received(data)
            if self.cycle is not None and not self.cycle.more_body:
                self._disarm()  # the whole request is in: the app's own timeouts apply now

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            self._disarm()
            super().on_response_complete()

        def shutdown(self) -> None:
            if self._idle() and not self.transport.is_closing():
                self._draining = True
                self.loop.call_later(drain_grace, super().shutdown)
                return
            super().shutdown()

    return GuardedH11Protocol


async def _unavailable(send: Any) -> None:
    body = b'{"detail":"server is shutting down"}'
    await send({"type": "http.response.start", "status": 503, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"retry-after", b"5"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
