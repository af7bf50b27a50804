"""Every docstring example in the package runs and shows what the code returns (three had
drifted: an F1 example from before article removal, a cut that no longer fit its mark, a JSON
example whose escapes the docstring itself consumed)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import fliprm

MODULES = sorted(m.name for m in pkgutil.walk_packages(fliprm.__path__, "fliprm."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    try:
        module = importlib.import_module(name)
    except ImportError as exc:  # an optional extra that is not installed
        pytest.skip(f"{name}: {exc}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, report=True, verbose=False)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"
