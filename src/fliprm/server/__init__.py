"""``fliprm serve``: FLIP scoring over HTTP, with micro-batching (needs ``fliprm[server]``).

Routes: ``POST /v1/score`` (native batch), ``POST /get_reward`` (OpenRLHF), ``GET /health``,
``GET /metrics`` (Prometheus). Build the app with :func:`create_app`; the CLI runs it with
:class:`GuardedServer` (uvicorn with request deadlines, a connection cap and a 503 drain) over
:func:`serve_config`; :class:`ServerThread` does the same on a background thread.
"""

from __future__ import annotations

from ..errors import MissingDependency

try:
    from ._app import create_app, load_model
    from ._run import GuardedServer, ServerThread, serve_config
except ImportError as exc:  # pragma: no cover - depends on the install
    if exc.name not in ("fastapi", "starlette", "uvicorn"):
        raise
    raise MissingDependency("the server needs its extra: pip install 'fliprm[server]'") from exc

__all__ = ["GuardedServer", "ServerThread", "create_app", "load_model", "serve_config"]
