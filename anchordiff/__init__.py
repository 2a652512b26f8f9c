"""AnchorDiff: grounding look-alike concepts by anchor-seeded propagation over SD3 / SD3.5 attention.

``from anchordiff import AnchorDiff, AnchorDiffOutput, AttentionRecord``. The names load lazily, so importing
the package (or its pure-math ``anchordiff.graph``) does not import diffusers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["AnchorDiff", "AnchorDiffOutput", "AttentionRecord"]

if TYPE_CHECKING:
    from anchordiff.pipeline import AnchorDiff, AnchorDiffOutput, AttentionRecord


def __getattr__(name: str) -> Any:
    if name in __all__:
        from anchordiff import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'anchordiff' has no attribute {name!r}")
