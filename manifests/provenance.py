"""Reading provenance strings: which parameters name a model, and which names are ``tiny``.

Used by the dataset card (the smoke-build warning) and by benchmark reports (the warning
banner), so a smoke build is recognised the same way everywhere. No heavy imports.
"""

from __future__ import annotations

import re

PROVENANCE_KEY = re.compile(r"model|revision|checkpoint|config", re.IGNORECASE)
"""History parameters that name a model, its revision or its configuration."""

TINY_NAME = re.compile(r"(^|[/@:_-])tiny($|[/@:_-])", re.IGNORECASE)
"""``tiny`` as a whole name part: ``tiny``, ``tiny@tiny-seed0``, ``org/tiny``; not ``tinyllama``."""


def is_tiny_name(name: str | None) -> bool:
    """Whether a model name or ``model@revision`` string names an offline ``tiny`` miniature."""
    return bool(name) and bool(TINY_NAME.search(str(name)))
