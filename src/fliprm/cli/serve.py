"""``fliprm serve``: the reward server (FastAPI + uvicorn, the ``server`` extra)."""

from __future__ import annotations

import ipaddress
import os
from typing import Annotated

import typer

from ._options import (
    BackendOpt,
    BaseUrlOpt,
    CacheOpt,
    ConcurrencyOpt,
    MaskEchoOpt,
    MaxTokensOpt,
    MethodOpt,
    ModelOpt,
    NoCacheOpt,
    SeedOpt,
    TemplateOpt,
    TempOpt,
    TruncOpt,
    make_reward,
)


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
    def serve(
        host: Annotated[
            str, typer.Option(help="bind address; non-loopback needs --api-key")
        ] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="port (0 = any free port)")] = 8080,
        api_key: Annotated[
            str | None,
            typer.Option(
                "--api-key", envvar="FLIPRM_API_KEY", help="clients must send it as a bearer token"
            ),
        ] = None,
        backend: BackendOpt = "embedded",
        base_url: BaseUrlOpt = None,
        model: ModelOpt = None,
        backend_api_key: Annotated[
            str | None,
            typer.Option(
                "--backend-api-key",
                envvar="FLIPRM_BACKEND_API_KEY",
                help="bearer token for an openai backend",
            ),
        ] = None,
        concurrency: ConcurrencyOpt = None,
        template: TemplateOpt = None,
        method: MethodOpt = "f1",
        parse_failure: Annotated[
            str, typer.Option("--parse-failure", help="error (None; RL default) | zero | raw")
        ] = "error",
        max_tokens: MaxTokensOpt = 256,
        temperature: TempOpt = 0.0,
        seed: SeedOpt = None,
        max_response_chars: TruncOpt = 8000,
        cache: CacheOpt = None,
        no_cache: NoCacheOpt = False,
        mask_echo: MaskEchoOpt = False,
        max_batch: Annotated[int, typer.Option(help="items per backend batch")] = 32,
        max_wait_ms: Annotated[float, typer.Option(help="wait for a batch to fill")] = 5.0,
        max_queue: Annotated[int, typer.Option(help="items queued before 503")] = 1024,
        request_timeout: Annotated[float, typer.Option(help="seconds per request (504)")] = 600.0,
        max_body_mb: Annotated[float, typer.Option(help="request body cap (413)")] = 16.0,
        failure_score: Annotated[
            float, typer.Option(help="/get_reward value for failed items")
        ] = 0.0,
        graceful_timeout: Annotated[
            float, typer.Option(help="seconds to finish in-flight work")
        ] = 60.0,
        log_level: Annotated[str, typer.Option()] = "info",
    ) -> None:
        """Serve FLIP rewards: POST /v1/score, POST /get_reward (OpenRLHF), GET /health, /metrics."""
        if not is_loopback(host) and not api_key:
            raise typer.BadParameter(
                f"--host {host} is reachable from other machines: set --api-key or FLIPRM_API_KEY",
                param_hint="--host",
            )
        # The server's key must not leak to an upstream openai backend via its env fallback.
        os.environ.pop("FLIPRM_API_KEY", None)
        try:
            import uvicorn

            from ..server import create_app
        except ImportError:
            typer.echo("fliprm serve needs its extra: pip install 'fliprm[server]'", err=True)
            raise typer.Exit(1) from None
        reward = make_reward(
            backend=backend,
            base_url=base_url,
            model=model,
            api_key=backend_api_key,
            concurrency=concurrency,
            template=template,
            method=method,
            parse_failure=parse_failure,
            max_tokens=max_tokens,
            temperature=temperature,
            seed=seed,
            max_response_chars=max_response_chars,
            cache=cache,
            no_cache=no_cache,
            mask_echo=mask_echo,
        )
        app_ = create_app(
            reward,
            api_key=api_key,
            max_batch_items=max_batch,
            max_wait_ms=max_wait_ms,
            max_queue_items=max_queue,
            request_timeout=request_timeout,
            max_body_bytes=int(max_body_mb * 1024 * 1024),
            failure_score=failure_score,
            close_reward=True,
            drain_timeout=graceful_timeout,
        )
        uvicorn.run(
            app_,
            host=host,
            port=port,
            log_level=log_level,
            timeout_graceful_shutdown=int(graceful_timeout),
        )
