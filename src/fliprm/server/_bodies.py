"""Request bodies parsed, and replies encoded, in worker threads: megabytes of JSON took the
event loop for seconds, so /health and small requests timed out behind them. Errors keep
FastAPI's 422 shape."""

from __future__ import annotations

import asyncio
import json
from typing import Any, TypeVar

from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

__all__ = ["body_schema", "json_bytes", "json_reply", "parse_body"]

_Body = TypeVar("_Body", bound=BaseModel)


def parse_body(body: bytes, model: type[_Body]) -> _Body:
    """``body`` as ``model``, run in a worker thread (megabytes of JSON take a while); errors
    are FastAPI's 422, its ``loc`` starting at ``"body"``."""
    try:
        data = json.loads(body)
    except ValueError as exc:  # bad JSON or bad UTF-8
        raise RequestValidationError([{
            "type": "json_invalid", "loc": ("body", getattr(exc, "pos", 0)),
            "msg": "JSON decode error", "input": {},
            "ctx": {"error": getattr(exc, "msg", str(exc))}}]) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])}
                                      for e in exc.errors(include_url=False)]) from None


def json_bytes(payload: Any) -> bytes:
    # what FastAPI's JSONResponse writes, built off the event loop (replies run to megabytes)
    return json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":"),
                      default=str).encode("utf-8")


async def json_reply(payload: Any) -> Response:
    return Response(await asyncio.to_thread(json_bytes, payload), media_type="application/json")


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI's requestBody for a route that parses ``model`` itself (refs inlined)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {k: inline(v) for k, v in node.items()}
        return [inline(v) for v in node] if isinstance(node, list) else node

    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": inline(schema)}}}}
