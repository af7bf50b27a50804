"""Run the server app under uvicorn on a background thread (tests, notebooks, one-process demos)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

__all__ = ["ServerThread", "serve_config"]


def serve_config(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    log_level: str = "info",
    graceful_timeout: float = 60.0,
    header_timeout: float = 30.0,
    idle_timeout: float = 15.0,
    max_connections: int | None = 512,
    drain_grace: float = 2.0,
) -> Any:
    """The uvicorn config ``fliprm serve`` runs: the guarded protocol (a deadline for every
    request to arrive whole, 503 for requests that arrive while draining), an idle timeout for
    kept-alive connections and a connection cap (503 beyond it)."""
    import uvicorn

    from ._protocol import guarded_protocol

    return uvicorn.Config(
        app, host=host, port=port, log_level=log_level,
        http=guarded_protocol(header_timeout, drain_grace),
        timeout_keep_alive=max(1, round(idle_timeout)),
        limit_concurrency=max_connections,
        timeout_graceful_shutdown=max(1, round(graceful_timeout)),
    )


class ServerThread:
    """uvicorn in a daemon thread, bound to a free port on 127.0.0.1 before it starts.

    >>> from fliprm import FlipReward
    >>> from fliprm.server import create_app
    >>> with ServerThread(create_app(FlipReward("fake", backend_options={"replies": []}))) as srv:
    ...     srv.url.startswith("http://127.0.0.1:")  # doctest: +SKIP
    True
    """

    def __init__(
        self, app: Any, *, host: str = "127.0.0.1", port: int = 0, **serve_options: Any
    ) -> None:
        import uvicorn

        serve_options.setdefault("log_level", "warning")
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))  # bound here, so there is no race for the port
        self.host, self.port = self._sock.getsockname()[:2]
        self.server = uvicorn.Server(serve_config(app, host=host, port=self.port, **serve_options))
        self._thread = threading.Thread(
            target=self.server.run,
            kwargs={"sockets": [self._sock]},
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
