"""Confusable concept groups: loaded from YAML and validated before anything is written."""

from __future__ import annotations

from collections import Counter
from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

DEFAULT_GROUPS = "groups.yaml"


class GroupsFileError(ValueError):
    """The groups file is invalid; the message names the file, the group and the fix."""


class ConceptGroup(BaseModel):
    """2 or 3 look-alike concepts (each 1-4 words) of one domain."""

    model_config = ConfigDict(frozen=True)

    id: str
    domain: str
    concepts: tuple[str, ...]

    @field_validator("id", "domain")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value or not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    @field_validator("concepts")
    @classmethod
    def _valid_concepts(cls, concepts: tuple[str, ...]) -> tuple[str, ...]:
        concepts = tuple(" ".join(str(c).split()) for c in concepts)
        if not 2 <= len(concepts) <= 3:
            raise ValueError(f"a group holds 2 or 3 concepts, this one has {len(concepts)}: {list(concepts)}")
        for concept in concepts:
            if not concept:
                raise ValueError("a concept name is empty")
            if not 1 <= len(concept.split()) <= 4:
                raise ValueError(f"concept {concept!r} has {len(concept.split())} words; use 1 to 4")
        lowered = [c.lower() for c in concepts]
        if len(set(lowered)) != len(lowered):
            raise ValueError(f"a concept appears twice: {list(concepts)}")
        return concepts


def load_groups(path: str | Path | None = None) -> list[ConceptGroup]:
    """Read and validate a groups file (the packaged ``manifests/groups.yaml`` by default).

    The file holds ``groups: [{id, domain, concepts: [...]}, ...]``. Duplicate group ids,
    duplicate concepts within a group, the same concept set twice, empty names and groups
    of fewer than 2 or more than 3 concepts raise ``GroupsFileError`` naming the group.
    """
    if path is None:
        source = "manifests/groups.yaml"
        text = resources.files("manifests").joinpath(DEFAULT_GROUPS).read_text()
    else:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as error:
            raise GroupsFileError(f"cannot read groups file {source}: {error.strerror}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise GroupsFileError(f"{source} is not valid YAML: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("groups"), list):
        raise GroupsFileError(
            f"{source} must hold a top-level 'groups:' list of {{id, domain, concepts}} entries"
        )

    groups: list[ConceptGroup] = []
    for index, entry in enumerate(document["groups"]):
        name = entry.get("id", f"#{index + 1}") if isinstance(entry, dict) else f"#{index + 1}"
        if not isinstance(entry, dict):
            raise GroupsFileError(f"{source}: group {name} is not a mapping with id, domain and concepts")
        try:
            groups.append(ConceptGroup.model_validate(entry))
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
            raise GroupsFileError(f"{source}: group {name!r} is invalid: {problems}") from None

    for group_id, count in Counter(g.id for g in groups).items():
        if count > 1:
            raise GroupsFileError(
                f"{source}: group id {group_id!r} appears {count} times; ids must be unique"
            )
    seen: dict[frozenset[str], str] = {}
    for group in groups:
        key = frozenset(c.lower() for c in group.concepts)
        if key in seen:
            raise GroupsFileError(
                f"{source}: group {group.id!r} has the same concepts as group {seen[key]!r}; remove one"
            )
        seen[key] = group.id
    if not groups:
        raise GroupsFileError(f"{source} has no groups")
    return groups
