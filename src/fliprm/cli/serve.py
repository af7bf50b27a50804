"""``fliprm serve``: the reward server (FastAPI + uvicorn, the ``server`` extra)."""

from __future__ import annotations

import ipaddress
import os
from typing import Annotated, Any

import typer

from ..cache import ResponseCache
from ..config import ServerOptions
from ..errors import BackendError, FlipError
from ..settings import OLD_API_KEY, SERVER_API_KEY, KeysEnv
from ._config_options import CliSettings, fail, reward_options, server_options


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
    @reward_options(preset="rl", default_cache=False, env=True)
    @server_options(env=True)
    def serve(
        settings: CliSettings,
        server: ServerOptions,
        server_api_key: Annotated[
            str | None,
            typer.Option("--api-key", help="clients must send it as a bearer token (env "
                         f"{SERVER_API_KEY})"),
        ] = None,
        cache_max_entries: Annotated[int, typer.Option(
            help="with --cache: completions kept at most (the oldest go)")] = 100_000,
    ) -> None:
        """Serve FLIP rewards: POST /v1/score, POST /get_reward (OpenRLHF), GET /health, /metrics.

        Starts from the RL preset (parse failures are errors, responses cut at 8,000
        characters, the echo guard on); every reward flag changes it, and a setting without
        its flag comes from FLIPRM_<SETTING> (FLIPRM_METHOD, FLIPRM_PRESET, FLIPRM_FAILURE_SCORE,
        ...), as for the RL adapters, so one environment configures both. No response cache
        unless --cache PATH is given (then at most --cache-max-entries completions)."""
        server = server.replace(api_key=server_api_key or KeysEnv().server())
        if not is_loopback(server.host) and not server.api_key:
            fail(f"--host {server.host} is reachable from other machines: set --api-key or "
                 f"{SERVER_API_KEY}")
        # For a server the old FLIPRM_API_KEY was its own key: it must not reach an upstream
        # openai backend through that backend's deprecated fallback.
        os.environ.pop(OLD_API_KEY, None)
        try:
            from ..server import GuardedServer, create_app, serve_config
        except ImportError:
            fail("fliprm serve needs its extra: pip install 'fliprm[server]'", code=1)
        reward = _loaded_reward(settings, cache_max_entries)
        app_ = create_app(reward, options=server, close_reward=True)
        GuardedServer(serve_config(app_, server)).run()


def _loaded_reward(settings: CliSettings, cache_max_entries: int) -> Any:
    """The reward to serve, its model loaded: never healthy over a model that does not load,
    and a judge that cannot give what the method needs is one error before listening."""
    from ..server import load_model

    if cache_max_entries < 1:
        fail("--cache-max-entries must be >= 1")
    try:
        cache = (ResponseCache(settings.cache, max_entries=cache_max_entries)
                 if settings.cache is not None else None)
        reward = settings.reward(cache=cache)
        try:
            reward.identify()
        except BackendError:
            pass  # not reachable yet (a vLLM still loading): /health and each item say so
    except FlipError as exc:
        fail(str(exc))
    try:
        load_model(reward)
    except FlipError as exc:
        fail(f"the model does not load: {type(exc).__name__}: {exc}", code=1)
    return reward
