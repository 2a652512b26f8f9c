"""The record schema, the manifest store, the concept groups and scene planning.

``from manifests import Record, ManifestStore, ...``: the names load lazily (PEP 562), so
importing one submodule (``manifests.store`` for ``mcc status``) does not import the rest
(pycocotools, numpy).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_SOURCES = {
    "manifests.groups": ("ConceptGroup", "GroupsFileError", "load_groups"),
    "manifests.masks": ("decode_mask", "encode_mask"),
    "manifests.record": (
        "RLE",
        "Box",
        "Concept",
        "GeneratedSource",
        "ImageInfo",
        "Record",
        "Rejection",
        "StageEvent",
        "State",
        "WebSource",
        "canonical_url",
        "web_record_id",
    ),
    "manifests.scenes": ("SceneSpec", "add_planned", "plan_scenes"),
    "manifests.store": ("ManifestStore", "RecordLoadError", "StoreCounts"),
}
_MODULE_OF = {name: module for module, names in _SOURCES.items() for name in names}

__all__ = [
    "RLE",
    "Box",
    "Concept",
    "ConceptGroup",
    "GeneratedSource",
    "GroupsFileError",
    "ImageInfo",
    "ManifestStore",
    "Record",
    "RecordLoadError",
    "Rejection",
    "SceneSpec",
    "StageEvent",
    "State",
    "StoreCounts",
    "WebSource",
    "add_planned",
    "canonical_url",
    "decode_mask",
    "encode_mask",
    "load_groups",
    "plan_scenes",
    "web_record_id",
]

if TYPE_CHECKING:
    from manifests.groups import ConceptGroup, GroupsFileError, load_groups
    from manifests.masks import decode_mask, encode_mask
    from manifests.record import (
        RLE,
        Box,
        Concept,
        GeneratedSource,
        ImageInfo,
        Record,
        Rejection,
        StageEvent,
        State,
        WebSource,
        canonical_url,
        web_record_id,
    )
    from manifests.scenes import SceneSpec, add_planned, plan_scenes
    from manifests.store import ManifestStore, RecordLoadError, StoreCounts


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'manifests' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
