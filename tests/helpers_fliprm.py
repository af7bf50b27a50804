"""Helpers shared by test modules (importable: tests/ is on sys.path via its conftest)."""

from __future__ import annotations


def shown_response(request) -> str:
    """The response text a FLIP prompt shows the judge (between ``<response>`` and
    ``</response>``), for fake backends that answer from what they were shown."""
    text = request.messages[-1]["content"]
    if "<response>\n" in text:
        return text.split("<response>\n", 1)[1].split("\n</response>", 1)[0]
    return text.split("[Response]\n", 1)[-1].split("\n\n[", 1)[0]


class Borrowed:
    """A shared backend (the session's model), minus aclose: the fixture owns its lifetime."""

    def __init__(self, backend):
        self._b = backend

    def __getattr__(self, name):
        return getattr(self._b, name)

    async def aclose(self) -> None:
        return None
