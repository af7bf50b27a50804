"""Shared fixtures. Tests marked ``model`` use the real embedded model (loaded once per session);
everything else runs on the FakeBackend and needs no model."""

from __future__ import annotations

import os

import pytest

from fliprm.backends.fake import FakeBackend


def _model_available() -> bool:
    try:
        import xllamacpp  # noqa: F401

        from fliprm.model import default_model_path

        default_model_path()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def embedded_backend():
    """The real embedded model, shared by every model test (loading it costs ~2 s)."""
    if os.environ.get("FLIPRM_SKIP_MODEL_TESTS") == "1" or not _model_available():
        pytest.skip("embedded model not installed (run scripts/setup.sh)")
    from fliprm.backends.embedded import EmbeddedBackend

    backend = EmbeddedBackend(n_ctx=4096)
    backend.start()
    yield backend
    backend.close()


@pytest.fixture
def fake_flip():
    """A FakeBackend that answers every FLIP call with a fixed inferred instruction."""

    def make(instruction: str = "Name the capital of France.", reasoning: str = "r") -> FakeBackend:
        import json

        reply = json.dumps({"REASONING": reasoning, "INFERRED INSTRUCTION": instruction})
        return FakeBackend(lambda req: reply)

    return make

