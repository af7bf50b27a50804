"""``fliprm serve``: the reward server (FastAPI + uvicorn, the ``server`` extra)."""

from __future__ import annotations

import ipaddress
import os
from typing import Annotated

import typer

from ..cache import ResponseCache
from ..errors import FlipError
from ._config_options import CliSettings, fail, reward_options


def is_loopback(host: str) -> bool:
    """True for hosts only this machine can reach.

    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("0.0.0.0")
    (True, True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def register(app: typer.Typer) -> None:
    @app.command()
    @reward_options(preset="rl", default_cache=False)
    def serve(
        settings: CliSettings,
        host: Annotated[
            str, typer.Option(help="bind address; non-loopback needs --api-key")
        ] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="port (0 = any free port)")] = 8080,
        server_api_key: Annotated[
            str | None,
            typer.Option(
                "--api-key", envvar="FLIPRM_API_KEY", help="clients must send it as a bearer token"
            ),
        ] = None,
        max_batch: Annotated[int, typer.Option(help="items per backend batch")] = 32,
        max_wait_ms: Annotated[float, typer.Option(help="wait for a batch to fill")] = 5.0,
        max_queue: Annotated[int, typer.Option(help="items queued before 503")] = 1024,
        request_timeout: Annotated[float, typer.Option(help="seconds per request (504)")] = 600.0,
        max_body_mb: Annotated[float, typer.Option(help="request body cap (413)")] = 16.0,
        max_instruction_chars: Annotated[int, typer.Option(
            help="a longer instruction is its item's error, not scored")] = 20_000,
        failure_score: Annotated[
            float, typer.Option(help="/get_reward value for failed items")
        ] = 0.0,
        graceful_timeout: Annotated[
            float, typer.Option(help="seconds to finish in-flight work")
        ] = 60.0,
        header_timeout: Annotated[float, typer.Option(
            help="seconds a client may take to send a request's headers and body")] = 30.0,
        idle_timeout: Annotated[float, typer.Option(
            help="seconds an idle kept-alive connection stays open")] = 15.0,
        write_timeout: Annotated[float | None, typer.Option(
            help="seconds a client may leave its reply unread before it is dropped "
            "(default: --idle-timeout)")] = None,
        max_connections: Annotated[int, typer.Option(
            help="open connections at most (lowered to fit the open-file limit); beyond it "
            "the connection waiting longest for its request is closed, or the newcomer gets "
            "503")] = 512,
        drain_grace: Annotated[float, typer.Option(
            help="at shutdown, seconds idle kept-alive connections stay open answering 503")] = 2.0,
        cache_max_entries: Annotated[int, typer.Option(
            help="with --cache: completions kept at most (the oldest go)")] = 100_000,
        log_level: Annotated[str, typer.Option()] = "info",
    ) -> None:
        """Serve FLIP rewards: POST /v1/score, POST /get_reward (OpenRLHF), GET /health, /metrics.

        Starts from the RL preset (parse failures are errors, responses cut at 8,000
        characters, the echo guard on); every reward flag changes it. No response cache
        unless --cache PATH is given (then at most --cache-max-entries completions)."""
        if not is_loopback(host) and not server_api_key:
            fail(f"--host {host} is reachable from other machines: set --api-key or FLIPRM_API_KEY")
        # The server's key must not leak to an upstream openai backend via its env fallback.
        os.environ.pop("FLIPRM_API_KEY", None)
        try:
            from ..server import GuardedServer, create_app, load_model, serve_config
        except ImportError:
            fail("fliprm serve needs its extra: pip install 'fliprm[server]'", code=1)
        if cache_max_entries < 1:
            fail("--cache-max-entries must be >= 1")
        try:
            cache = (ResponseCache(settings.cache, max_entries=cache_max_entries)
                     if settings.cache is not None else None)
            reward = settings.reward(cache=cache)
        except FlipError as exc:
            fail(str(exc))
        try:  # before listening: never healthy over a model that does not load
            load_model(reward)
        except FlipError as exc:
            fail(f"the model does not load: {type(exc).__name__}: {exc}", code=1)
        app_ = create_app(
            reward,
            api_key=server_api_key,
            max_batch_items=max_batch,
            max_wait_ms=max_wait_ms,
            max_queue_items=max_queue,
            request_timeout=request_timeout,
            max_body_bytes=int(max_body_mb * 1024 * 1024),
            max_instruction_chars=max_instruction_chars,
            failure_score=failure_score,
            close_reward=True,
            drain_timeout=graceful_timeout,
        )
        GuardedServer(serve_config(
            app_, host=host, port=port, log_level=log_level, graceful_timeout=graceful_timeout,
            header_timeout=header_timeout, idle_timeout=idle_timeout, write_timeout=write_timeout,
            max_connections=max_connections, drain_grace=drain_grace,
        )).run()
