"""The examples in the package's docstrings run, with exact output (River's runnable-docs habit).

Every module of the package is imported and its doctests run; a module without
examples passes trivially, so a new example is picked up without touching this file.
"""
from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import lifelong

# Every module, heavy ones included: the test environment installs all the package needs.
MODULES = sorted(m.name for m in pkgutil.walk_packages(lifelong.__path__, prefix="lifelong.")
                 if not m.name.startswith("lifelong.tests"))


def test_the_package_has_examples() -> None:
    finder = doctest.DocTestFinder()
    with_examples = [name for name in MODULES
                     if any(test.examples for test in finder.find(importlib.import_module(name)))]
    assert len(with_examples) >= 4, with_examples


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
