"""Fixture scopes shared by the tests."""

from __future__ import annotations

import os

import pytest


def shared_unless_mutating(fixture_name: str, config: pytest.Config) -> str:
    """A fixture ``scope`` for fixtures whose body runs the code under test (a build, a card): one per
    module normally; one per test under the mutation pass (``MUTANT_UNDER_TEST`` set by mutmut), which
    maps each mutated function to the tests that call it: a module fixture would credit only the first
    test of the module, and a mutant that only the others catch would pass as a survivor."""
    return "function" if os.environ.get("MUTANT_UNDER_TEST") else "module"
