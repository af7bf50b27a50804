"""``fliprm doctor``: what it reports about the embedded default."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fliprm.cli.main import _register, app


@pytest.mark.parametrize("supported,shown", [
    (True, "one forward pass"),
    (False, "forced steps"),
])
def test_doctor_names_how_likelihood_is_computed(monkeypatch, supported, shown) -> None:
    monkeypatch.setattr("fliprm.backends._libllama.prompt_pass_supported", lambda: supported)
    _register()
    res = CliRunner().invoke(app, ["doctor"], env={"COLUMNS": "200"})
    assert "likelihood, pmi" in res.output and shown in res.output, res.output
