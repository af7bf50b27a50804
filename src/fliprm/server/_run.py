"""Run the server app under uvicorn: :class:`GuardedServer` (what ``fliprm serve`` runs) and
:class:`ServerThread` (the same on a background thread: tests, notebooks, one-process demos)."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from ..config import ServerOptions
from ._protocol import ConnectionGate, connection_cap, gated_listener, guarded_protocol

__all__ = ["GuardedServer", "ServerThread", "serve_config"]


def serve_config(app: Any, options: ServerOptions | None = None, **changes: Any) -> uvicorn.Config:
    """The uvicorn config ``fliprm serve`` runs (with :class:`GuardedServer`): a deadline for
    every request to arrive whole (``header_timeout``), an idle timeout for kept-alive
    connections, a write deadline (a reply the client leaves unread for ``write_timeout``
    seconds, default ``idle_timeout``, drops the connection), a connection cap (lowered to fit
    the open-file limit; see :func:`~fliprm.server._protocol.connection_cap`), and 503 for
    requests that arrive on kept-alive connections during the first ``drain_grace`` seconds of
    a shutdown.

    ``options`` defaults to the app's own (``create_app`` keeps them in ``app.state.options``);
    ``changes`` are :class:`~fliprm.config.ServerOptions` fields applied on top. The app's
    ``/metrics`` reports the connections (``app.state.connections``)."""
    state = getattr(app, "state", None)
    opts = options or getattr(state, "options", None) or ServerOptions()
    if changes:
        opts = opts.replace(**changes)
    gate = ConnectionGate(connection_cap(opts.max_connections))
    if state is not None:
        state.connections = gate
    config = uvicorn.Config(
        app, host=opts.host, port=opts.port, log_level=opts.log_level,
        http=guarded_protocol(opts.header_timeout, opts.drain_grace, gate, opts.write_deadline),
        # the gate caps connections at accept(); uvicorn's own limit only counts them once a
        # request has arrived, after the descriptors are gone
        limit_concurrency=None,
        loop="asyncio",  # the gate works on the asyncio listening socket (uvloop accepts itself)
        timeout_keep_alive=opts.idle_timeout,  # type: ignore[arg-type]  (any float works)
        timeout_graceful_shutdown=max(1, round(opts.graceful_timeout)),
    )
    config.fliprm_gate = gate  # type: ignore[attr-defined]
    return config


class GuardedServer(uvicorn.Server):
    """uvicorn's server on a listening socket that obeys the config's connection gate; a
    SIGTERM that ends in a finished drain exits 0 (uvicorn re-raises it: the process would die
    of the signal)."""

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        gate = getattr(self.config, "fliprm_gate", None)
        if gate is not None:
            if sockets is None:
                sockets = [self.config.bind_socket()]
            sockets = [gated_listener(s, gate) for s in sockets]
        await super().serve(sockets=sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                captured = getattr(self, "_captured_signals", None)
                if captured and not self.force_exit:
                    captured[:] = [s for s in captured if s != signal.SIGTERM]


class ServerThread:
    """uvicorn in a daemon thread, bound to a free port on 127.0.0.1 before it starts; takes
    :func:`serve_config`'s options.

    >>> from fliprm import FlipReward
    >>> from fliprm.server import create_app
    >>> with ServerThread(create_app(FlipReward("fake", backend_options={"replies": []}))) as srv:
    ...     srv.url.startswith("http://127.0.0.1:")  # doctest: +SKIP
    True
    """

    def __init__(
        self, app: Any, *, host: str = "127.0.0.1", port: int = 0, **serve_options: Any
    ) -> None:
        serve_options.setdefault("log_level", "warning")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))  # bound here, so there is no race for the port
        self.host, self.port = sock.getsockname()[:2]
        self.server = GuardedServer(serve_config(app, host=host, port=self.port, **serve_options))
        self._thread = threading.Thread(
            target=self.server.run,
            kwargs={"sockets": [sock]},
            name="fliprm-serve",
            daemon=True,
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Graceful: stop accepting, let in-flight requests finish, run the app's shutdown."""
        self.server.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> ServerThread:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
