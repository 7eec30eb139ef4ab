"""The runnable examples in the docstrings of the models / training modules stay runnable."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "hwreg_rs.nn", "hwreg_rs.nn.module", "hwreg_rs.nn.layers", "hwreg_rs.nn.conv", "hwreg_rs.losses",
    "hwreg_rs.optim", "hwreg_rs.constraints", "hwreg_rs.train", "hwreg_rs.data", "hwreg_rs.analysis",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    mod = importlib.import_module(name)
    res = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert res.failed == 0, f"{res.failed} of {res.attempted} examples failed in {name}"
    assert res.attempted > 0
