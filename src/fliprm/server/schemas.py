"""Request and response bodies of ``fliprm serve``."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

_SURROGATE = re.compile("[\ud800-\udfff]")

__all__ = ["OpenRLHFRequest", "OpenRLHFResponse", "ScoreItem", "ScoreRequest", "ScoreResponse"]


class ScoreItem(BaseModel):
    """One pair: ``instruction`` + ``response`` (+ ``context``), or chat ``messages`` (the last
    user turn is the instruction; a trailing assistant turn is the response).

    The text fields take any JSON value on purpose: a null, a number or a list where text
    belongs becomes that item's ``error`` (naming the item and the field), as in the Python
    API, instead of a 422 that would throw away every other item of the batch.
    """

    model_config = ConfigDict(extra="forbid")

    instruction: Any = Field(default=None, description="string (or use messages)")
    messages: list[dict[str, Any]] | None = None
    response: Any = Field(default=None, description="string")
    context: Any = Field(default=None, description="string or a list of chat messages")
    id: str | int | None = Field(default=None, description="echoed back in the result")

    @field_validator("id")
    @classmethod
    def _encodable_id(cls, v: str | int | None) -> str | int | None:
        # echoed back, so it must survive UTF-8 encoding of the reply (a JSON "\ud800" would not)
        if isinstance(v, str) and _SURROGATE.search(v):
            raise ValueError("id is not valid Unicode (lone surrogate)")
        return v


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[ScoreItem]


class ScoreResponse(BaseModel):
    model: str
    #: the reward's settings fingerprint: clients can check every reply came from one reward
    fingerprint: str
    #: FlipResult fields plus ``index`` (the item's place in the request) and ``id`` (echoed)
    results: list[dict[str, Any]]


class OpenRLHFRequest(BaseModel):
    """OpenRLHF's remote reward request (``--reward.remote_url``). Empty lists are valid."""

    query: list[str] = Field(default_factory=list)
    prompts: list[str] | None = None
    labels: list[Any] | None = None


class OpenRLHFResponse(BaseModel):
    rewards: list[float]
    scores: list[float]
    extra_logs: dict[str, list[float]]
    #: text per sample (flip_method, flip_inferred_instruction); OpenRLHF reads only the above
    extra_info: dict[str, list[str]] = Field(default_factory=dict)
