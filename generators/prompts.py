"""Prompts for generated scenes, composed deterministically from a record's scene spec.

The wording lives in ``manifests/scenes.yaml`` (templates, viewpoints, arrangements,
settings); this module only fills a template. A template may use:

- ``{objects}``: every concept with its article, in a seeded order, joined naturally
  ("a lemon and a lime", "a rose, a peony and a camellia");
- ``{setting}``: the spec's setting ("in a grassy meadow");
- ``{viewpoint}`` / ``{viewpoint_cap}``: a seeded viewpoint, as is / first letter upper-case;
- ``{arrangement}``: a seeded arrangement ("side by side").

The choices are drawn from a ``random.Random`` seeded with the spec (seed, template,
setting, concepts), so the same spec always gives the same prompt, on any machine and
Python version, and two specs that differ only in seed usually differ in wording.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Sequence
from typing import Any

from manifests.record import GeneratedSource, Record
from manifests.scenes import scene_vocabulary

PLACEHOLDERS = frozenset({"objects", "setting", "viewpoint", "viewpoint_cap", "arrangement"})

# Words that start with a vowel letter but a consonant sound ("a unicorn", "a European"),
# and the reverse ("an hour"). Checked as prefixes of the first word, lower-case.
_CONSONANT_SOUND_PREFIXES = ("uni", "use", "usu", "uti", "ure", "eu", "ewe", "one", "once", "ukulele")
_VOWEL_SOUND_PREFIXES = ("hour", "honest", "honour", "honor", "heir")
# Lower-case acronyms read letter by letter whose first letter sounds like a vowel ("an SUV").
_VOWEL_SOUND_WORDS = frozenset(
    {"suv", "mri", "fbi", "x-ray", "lcd", "led", "mp3", "sd", "hdmi", "rv", "nba", "nfl"}
)


class PromptTemplateError(ValueError):
    """A template names a placeholder this module does not fill, or is not a format string."""


def indefinite_article(noun_phrase: str) -> str:
    """``"a"`` or ``"an"`` for a noun phrase, by the sound of its first word (a heuristic)."""
    word = noun_phrase.strip().lower()
    if not word:
        raise ValueError("cannot choose an article for an empty noun phrase")
    if word.split()[0] in _VOWEL_SOUND_WORDS or word.startswith(_VOWEL_SOUND_PREFIXES):
        return "an"
    if word.startswith(_CONSONANT_SOUND_PREFIXES):
        return "a"
    return "an" if word[0] in "aeiou" else "a"


def with_article(noun_phrase: str) -> str:
    """``"an alpaca"``, ``"a lime"``."""
    return f"{indefinite_article(noun_phrase)} {noun_phrase.strip()}"


def join_naturally(items: Sequence[str]) -> str:
    """``"x"``, ``"x and y"``, ``"x, y and z"`` (no serial comma)."""
    items = list(items)
    if not items:
        raise ValueError("nothing to join")
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def template_placeholders(template: str) -> set[str]:
    """The placeholder names of a format-string template."""
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as error:
        raise PromptTemplateError(f"template {template!r} is not a valid format string: {error}") from None


def compose_prompt(
    concepts: Sequence[str],
    template: str,
    setting: str,
    seed: int,
    vocabulary: dict[str, Any] | None = None,
) -> str:
    """The prompt for one scene spec.

    ``concepts`` are the 2-3 concept names, ``template`` a format string of the scene
    vocabulary, ``setting`` its setting text, ``seed`` the spec's image seed.
    ``vocabulary`` defaults to ``manifests.scenes.scene_vocabulary()`` (its
    ``viewpoints`` and ``arrangements`` lists are used). Deterministic in its arguments.
    """
    if not concepts:
        raise ValueError("a prompt needs at least one concept")
    unknown = template_placeholders(template) - PLACEHOLDERS
    if unknown:
        raise PromptTemplateError(
            f"template {template!r} uses unknown placeholder(s) {sorted(unknown)}; "
            f"use only {sorted(PLACEHOLDERS)}"
        )
    vocabulary = vocabulary if vocabulary is not None else scene_vocabulary()
    viewpoints: list[str] = vocabulary["viewpoints"]
    arrangements: list[str] = vocabulary["arrangements"]
    # String seeds are hashed with SHA-512 by random.Random: stable across processes.
    rng = random.Random("prompt|" + "|".join([str(seed), template, setting, *concepts]))
    order = list(concepts)
    rng.shuffle(order)
    viewpoint = rng.choice(viewpoints)
    arrangement = rng.choice(arrangements)
    prompt = template.format(
        objects=join_naturally([with_article(c) for c in order]),
        setting=setting.strip(),
        viewpoint=viewpoint,
        viewpoint_cap=viewpoint[:1].upper() + viewpoint[1:],
        arrangement=arrangement,
    )
    prompt = re.sub(r"\s+", " ", prompt).strip()
    return prompt[:1].upper() + prompt[1:]


def prompt_for_record(record: Record) -> str:
    """The prompt of a generated record (``record.source`` must be a ``GeneratedSource``)."""
    if not isinstance(record.source, GeneratedSource):
        raise ValueError(
            f"record {record.id} is a {record.source.kind} record; only generated records have prompts"
        )
    source = record.source
    return compose_prompt(record.concept_names, source.template, source.setting, source.seed)
