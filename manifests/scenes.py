"""Scene specs: the deterministic expansion of concept groups into images to generate.

A scene spec fixes everything about a generated image except the model: the group and
its concepts, a prompt template, a setting, a viewpoint-free seed. Its hash is the record
id, so planning twice (same groups, ``per_group`` and ``seed``) yields the same records
and writes nothing new.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from manifests.groups import ConceptGroup, GroupsFileError, load_groups
from manifests.record import Concept, GeneratedSource, Record, State, generated_record_id
from manifests.store import ManifestStore


@dataclass(frozen=True)
class SceneSpec:
    """One planned generated image."""

    group: str
    domain: str
    concepts: tuple[str, ...]
    template: str
    setting: str
    seed: int

    @property
    def num_concepts(self) -> int:
        return len(self.concepts)

    @property
    def record_id(self) -> str:
        return generated_record_id(self.group, list(self.concepts), self.template, self.setting, self.seed)

    def to_record(self) -> Record:
        """A ``planned`` record for this spec."""
        record = Record(
            id=self.record_id,
            group=self.group,
            concepts=[Concept(name=c) for c in self.concepts],
            source=GeneratedSource(template=self.template, setting=self.setting, seed=self.seed),
            state=State.planned,
        )
        return record.log("plan", "planned from scene spec", params={"domain": self.domain})


@cache
def scene_vocabulary() -> dict[str, Any]:
    """Templates, viewpoints, arrangements and settings per domain (``manifests/scenes.yaml``)."""
    return yaml.safe_load(resources.files("manifests").joinpath("scenes.yaml").read_text())


def plan_scenes(groups: list[ConceptGroup] | str | Path, per_group: int, seed: int = 0) -> list[SceneSpec]:
    """Expand each group into ``per_group`` scene specs, deterministically from ``seed``.

    ``groups`` is a list of groups or the path of a groups file (validated first, so an
    invalid file fails before anything is planned or written).

    Each spec gets a template and a setting of its group's domain (cycled so a group's
    scenes differ) and a 31-bit image seed. The same arguments give the same specs.
    """
    if not isinstance(groups, list):
        groups = load_groups(groups)
    if per_group < 1:
        raise ValueError(f"per_group must be at least 1, got {per_group}")
    vocabulary = scene_vocabulary()
    templates: list[str] = vocabulary["templates"]
    specs: list[SceneSpec] = []
    for group in groups:
        settings = vocabulary["settings"].get(group.domain)
        if not settings:
            raise GroupsFileError(
                f"group {group.id!r} has domain {group.domain!r}, which has no settings in manifests/scenes.yaml; "
                f"use one of {sorted(vocabulary['settings'])} or add settings for it"
            )
        rng = random.Random(f"{seed}:{group.id}")
        setting_order = rng.sample(settings, len(settings))
        template_order = rng.sample(templates, len(templates))
        for index in range(per_group):
            specs.append(
                SceneSpec(
                    group=group.id,
                    domain=group.domain,
                    concepts=group.concepts,
                    template=template_order[index % len(template_order)],
                    setting=setting_order[index % len(setting_order)],
                    seed=rng.randrange(2**31),
                )
            )
    return specs


def add_planned(store: ManifestStore, specs: list[SceneSpec]) -> tuple[int, int]:
    """Write a ``planned`` record for each spec not yet in the store.

    Returns (created, already present). Existing records, whatever their state, are left alone.
    """
    present = set(store.ids())
    new = {spec.record_id: spec for spec in reversed(specs) if spec.record_id not in present}  # first wins
    created = store.put_many(new[record_id].to_record() for record_id in sorted(new))
    return created, len(specs) - created
