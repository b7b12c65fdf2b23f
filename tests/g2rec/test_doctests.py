"""The runnable examples in the core library's docstrings hold."""

import doctest
import importlib
import pkgutil

import pytest

import g2rec

MODULES = sorted(info.name for info in pkgutil.iter_modules(g2rec.__path__, "g2rec."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"
