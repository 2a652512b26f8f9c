"""The record schema, the manifest store, the concept groups and scene planning."""

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
