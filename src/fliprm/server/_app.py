"""The FastAPI app behind ``fliprm serve``: native scoring, OpenRLHF's /get_reward, health and
metrics. Every route scores through one :class:`MicroBatcher` over one ``FlipReward``."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from .. import __version__
from ..config import ServerOptions
from ..errors import FlipError
from ..inputs import split_conversation
from ..integrations._common import empty_result
from ..integrations.openrlhf import extract_response, rewards_payload
from ..result import FlipResult
from ..reward import FlipReward
from ._batcher import MicroBatcher, QueueFull, RequestTimeout, ShuttingDown
from ._bodies import body_schema, json_reply, parse_body
from ._metrics import Metrics
from ._middleware import LimitsMiddleware
from .schemas import OpenRLHFRequest, OpenRLHFResponse, ScoreRequest, ScoreResponse

__all__ = ["create_app", "load_model"]


def load_model(reward: FlipReward) -> None:
    """Verify and load ``reward``'s in-process model now (a no-op for HTTP and fake backends),
    so a server never reports healthy over a model that does not load. Raises its
    :class:`~fliprm.errors.FlipError` (e.g. ``ModelIntegrityError`` naming the file and hash).

    >>> load_model(FlipReward("fake", backend_options={"replies": []}))
    """
    start = getattr(reward.backend, "start", None)
    if callable(start):
        start()


def _instruction_chars(value: Any, infer: str) -> int:
    """Length of the instruction an item's field holds (0 when it is unusable: the reward
    reports that as the item's own error)."""
    if isinstance(value, str):
        return len(value)
    try:
        instruction = split_conversation(value, infer=infer)[0]
    except Exception:  # noqa: BLE001 - malformed messages are the reward's to name
        return 0
    return len(instruction) if isinstance(instruction, str) else 0


def _openrlhf_items(req: OpenRLHFRequest) -> tuple[list[Any], list[str]]:
    """OpenRLHF's request as (instructions, responses): instruction = label, response = query
    minus prompt (CPU work on long queries: run in a worker thread)."""
    n = len(req.query)
    for name, values in (("prompts", req.prompts), ("labels", req.labels)):
        if values is not None and len(values) != n:
            raise HTTPException(422, f"{len(values)} {name} for {n} queries")
    if n and req.labels is None:
        raise HTTPException(422, "labels are required: the label holds the instruction")
    prompts = req.prompts or [None] * n
    labels = [x[0] if isinstance(x, list) and len(x) == 1 else x for x in (req.labels or [])]
    return labels, [extract_response(q, p) for q, p in zip(req.query, prompts)]


async def _client_gone(request: Request) -> None:
    """Return once the client hangs up. The body is read by now, so the server's next ASGI
    message is ``http.disconnect`` (as Starlette's StreamingResponse listens for it)."""
    while (await request.receive())["type"] != "http.disconnect":
        await asyncio.sleep(0.25)  # not expected after the body; never spin on it


def create_app(
    reward: FlipReward,
    options: ServerOptions | None = None,
    *,
    close_reward: bool = False,
    **changes: Any,
) -> FastAPI:
    """Build the reward server app for ``reward``.

    Args:
        reward: the one :class:`FlipReward` every request is scored with.
        options: limits, batching and timeouts (:class:`~fliprm.config.ServerOptions`; its
            fields document each one); ``changes`` are applied on top (any field, e.g.
            ``max_wait_ms=20``).
        close_reward: close ``reward`` at shutdown (the CLI owns its reward; tests do not).

    Example:
        >>> from fliprm import FlipReward
        >>> app = create_app(FlipReward("fake", backend_options={"replies": []}))
        >>> sorted(r.path for r in app.routes if r.path.startswith(("/v1", "/get", "/he", "/me")))
        ['/get_reward', '/health', '/metrics', '/v1/score']
        >>> create_app(FlipReward("fake"), max_wait_ms=20).state.options.max_wait_ms
        20.0
    """
    opts = options or ServerOptions()
    if changes:
        opts = opts.replace(**changes)
    metrics = Metrics()
    batcher = _make_batcher(reward, metrics, opts)
    app = FastAPI(title="fliprm reward server", version=__version__,
                  lifespan=_lifespan(reward, batcher, opts, close_reward))
    app.state.options = opts
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.state.reward = reward
    app.state.model_error = None
    _add_scoring_routes(app, _RequestScorer(app, opts))
    _add_status_routes(app)
    app.add_middleware(
        LimitsMiddleware,
        metrics=metrics,
        api_key=opts.api_key,
        max_body_bytes=opts.max_body_bytes,
        routes=frozenset(getattr(r, "path", "") for r in app.routes),
    )
    return app


def _make_batcher(reward: FlipReward, metrics: Metrics, opts: ServerOptions) -> MicroBatcher:
    inflight = opts.max_inflight_batches
    if inflight is None:  # HTTP backends take several batches at once; the embedded model one
        inflight = max(1, min(8, reward.engine.max_concurrency // 4))
    return MicroBatcher(
        reward,
        metrics,
        max_batch_items=opts.max_batch_items,
        max_wait_s=opts.max_wait_ms / 1000,
        max_queue_items=opts.max_queue_items,
        max_inflight_batches=inflight,
    )


def _lifespan(reward: FlipReward, batcher: MicroBatcher, opts: ServerOptions,
              close_reward: bool) -> Any:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await asyncio.to_thread(load_model, reward)
        except FlipError as exc:
            # serve anyway: /health says why (503), scoring routes answer 503 with it
            app.state.model_error = f"{type(exc).__name__}: {exc}"
        batcher.start()
        yield
        # uvicorn has already let in-flight requests finish; drain whatever is still queued.
        await batcher.aclose(opts.graceful_timeout)
        if close_reward:
            await reward.aclose()

    return lifespan


class _RequestScorer:
    """Scores one request's items through the app's batcher, within the server's limits."""

    def __init__(self, app: FastAPI, opts: ServerOptions) -> None:
        self.app, self.opts = app, opts
        self.reward: FlipReward = app.state.reward
        self.batcher: MicroBatcher = app.state.batcher
        self.metrics: Metrics = app.state.metrics
        self.max_items = min(opts.max_items_per_request, opts.max_queue_items)

    async def run(self, instr: list[Any], resp: list[Any], ctx: list[Any],
                  request: Request | None = None, index: list[int] | None = None,
                  ) -> list[FlipResult]:
        """Score the items; ``index``: their places in the request (default: 0, 1, ...)."""
        metrics = self.metrics
        if self.app.state.model_error is not None:
            metrics.rejected["model_failed"] += 1
            raise HTTPException(503, self.app.state.model_error)
        if len(instr) > self.max_items:
            metrics.rejected["too_large"] += 1
            raise HTTPException(413, f"at most {self.max_items} items per request")
        out = self._too_long(instr, index)
        todo = [i for i, r in enumerate(out) if r is None]
        if len(todo) < len(instr):
            got = await self.run([instr[i] for i in todo], [resp[i] for i in todo],
                                 [ctx[i] for i in todo], request,
                                 [i if index is None else index[i] for i in todo])
            for i, res in zip(todo, got):
                out[i] = res
            return [r for r in out if r is not None]
        submit = asyncio.ensure_future(self.batcher.submit(instr, resp, ctx,
                                                           timeout=self.opts.request_timeout,
                                                           index=index))
        # a client that hangs up has its items dropped (queued) or cancelled (running)
        watch = asyncio.ensure_future(_client_gone(request)) if request is not None else None
        try:
            if watch is not None:
                await asyncio.wait({submit, watch}, return_when=asyncio.FIRST_COMPLETED)
                if not submit.done():
                    submit.cancel()
                    metrics.rejected["client_gone"] += 1
                    raise HTTPException(499, "client closed the request")
            return await submit
        except QueueFull as exc:
            metrics.rejected["queue_full"] += 1
            raise HTTPException(503, str(exc), headers={"Retry-After": str(exc.retry_after)})
        except ShuttingDown as exc:
            metrics.rejected["shutting_down"] += 1
            raise HTTPException(503, str(exc), headers={"Retry-After": "5"})
        except RequestTimeout as exc:
            metrics.rejected["timeout"] += 1
            raise HTTPException(504, str(exc))
        finally:
            if watch is not None:
                watch.cancel()

    def _too_long(self, instr: list[Any], index: list[int] | None) -> list[FlipResult | None]:
        """An error result for each over-long instruction (None for the rest), before any
        work on it: masking a 10 MB instruction's echo alone took seconds."""
        reward, limit = self.reward, self.opts.max_instruction_chars
        out: list[FlipResult | None] = [None] * len(instr)
        for i, value in enumerate(instr):
            n = _instruction_chars(value, reward.config.infer)
            if n > limit:
                self.metrics.rejected["instruction_too_long"] += 1
                out[i] = FlipResult(
                    reward=None, method=reward.config.method, model=reward.backend.model_id,
                    error_kind="bad_input",
                    error=f"item {i if index is None else index[i]}: field 'instruction' has "
                    f"{n:,} characters, over this server's limit of {limit:,} "
                    "(--max-instruction-chars)")
        return out

    async def nonblank(self, instr: list[Any], resp: list[str],
                       request: Request) -> list[FlipResult]:
        # An empty policy output is a real 0, not a judge failure (same rule as the adapters).
        todo = [i for i, r in enumerate(resp) if r.strip()]
        out = [empty_result(self.reward.config.method) for _ in resp]
        got = await self.run([instr[i] for i in todo], [resp[i] for i in todo],
                             [None] * len(todo), request, todo)
        for i, res in zip(todo, got):
            out[i] = res
        return out


def _add_scoring_routes(app: FastAPI, scorer: _RequestScorer) -> None:
    reward = scorer.reward

    @app.post("/v1/score", response_model=ScoreResponse, openapi_extra=body_schema(ScoreRequest))
    async def score(request: Request) -> Response:
        """Score a batch of items; results come back in input order as FlipResult dicts, each with
        its ``index`` in the request (and the item's ``id``, if it sent one)."""
        req = await asyncio.to_thread(parse_body, await request.body(), ScoreRequest)
        results = await scorer.run(
            [it.messages if it.messages is not None else it.instruction for it in req.items],
            [it.response for it in req.items],
            [it.context for it in req.items],
            request,
        )
        out = []
        for i, (it, res) in enumerate(zip(req.items, results)):
            # index: the item's place in this request, so a client can check every result
            # is the one for its item (adapters refuse to guess from list positions)
            d = {**res.to_dict(), "index": i}
            if it.id is not None:
                d["id"] = it.id
            out.append(d)
        return await json_reply({"model": reward.backend.model_id,
                                  "fingerprint": reward.fingerprint(), "results": out})

    @app.post("/get_reward", response_model=OpenRLHFResponse,
              openapi_extra=body_schema(OpenRLHFRequest))
    async def get_reward(request: Request) -> Response:
        """OpenRLHF's remote reward: instruction = label, response = query minus prompt."""
        req = await asyncio.to_thread(parse_body, await request.body(), OpenRLHFRequest)
        labels, responses = await asyncio.to_thread(_openrlhf_items, req)
        results = await scorer.nonblank(labels, responses, request)
        return await json_reply(rewards_payload(results, scorer.opts.failure_score,
                                                reward.config.method))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's own handler echoes the input as UTF-8 and fails with a 500 on a lone
        # surrogate (a JSON "\ud800" escape, e.g. from a JS client); \u escapes always encode.
        body = json.dumps({"detail": jsonable_encoder(exc.errors())}, ensure_ascii=True)
        return Response(body, status_code=422, media_type="application/json")


def _add_status_routes(app: FastAPI) -> None:
    reward: FlipReward = app.state.reward
    batcher: MicroBatcher = app.state.batcher
    metrics: Metrics = app.state.metrics

    @app.get("/health")
    async def health() -> JSONResponse:
        """200 "ok" only while the model is loaded and the server takes work; else 503 and
        why ("model failed to load" with ``error``, or "draining")."""
        failed = app.state.model_error is not None
        status = "model failed to load" if failed else "draining" if batcher._closing else "ok"
        body = {
            "status": status,
            "model": reward.backend.model_id,
            "fingerprint": reward.fingerprint(),
            "settings": reward.identity(),
            "version": __version__,
            "queue_depth": batcher.depth,
        }
        if failed:
            body["error"] = app.state.model_error
        return JSONResponse(body, status_code=200 if status == "ok" else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> str:
        gauges = {"queue_depth": float(batcher.depth), "inflight_items": float(batcher.inflight)}
        gate = getattr(app.state, "connections", None)  # set by serve_config
        if gate is not None:
            gauges["open_connections"] = float(gate.open)
            gauges["max_connections"] = float(gate.cap)
        engine = reward.engine.stats
        return metrics.render(
            gauges, lambda: {k: v for k, v in asdict(engine).items() if k != "in_flight"},
            closed=gate.closed if gate is not None else None,
        )
