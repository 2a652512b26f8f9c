"""Licence strings and URLs normalised to a small set of codes, and the allow-list.

Web sources spell licences many ways: ``"CC BY-SA 4.0"``, ``"cc-by-sa-4.0"`` (Wikimedia),
``"by-sa"`` + version ``"2.0"`` (Openverse), ``"https://creativecommons.org/licenses/by-sa/4.0/"``,
``"Attribution-ShareAlike 4.0 International"``, ``"Public domain"``. ``parse_licence``
maps each to a ``Licence`` with a code of ``LICENCE_CODES`` and an optional version, so
the allow-list is a set of codes:

========================  ==========================================================
code                      meaning
========================  ==========================================================
``cc0``                   CC0 public-domain dedication
``public-domain``         public domain (the PD Mark, "Public domain", ``pd-*`` tags)
``cc-by``                 CC Attribution
``cc-by-sa``              CC Attribution-ShareAlike
``cc-by-nc``...           the NonCommercial / NoDerivatives variants
``gfdl``                  GNU Free Documentation License
``all-rights-reserved``   explicitly not free
``unrecognised``          a non-empty text no rule understood (kept in ``raw``)
========================  ==========================================================

No licence at all (``None`` or an empty string) is *unknown*, a separate case the scraper
refuses unless told otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_ALLOWED_LICENCES: frozenset[str] = frozenset({"cc0", "public-domain", "cc-by", "cc-by-sa"})
"""What the scraper keeps by default: free to redistribute and modify, attribution at most."""

_CC_CODES = ("cc-by", "cc-by-sa", "cc-by-nc", "cc-by-nd", "cc-by-nc-sa", "cc-by-nc-nd")
LICENCE_CODES: frozenset[str] = frozenset(
    {"cc0", "public-domain", *_CC_CODES, "gfdl", "all-rights-reserved", "unrecognised"}
)

_NAMES = {
    "cc0": "CC0",
    "public-domain": "Public Domain",
    "gfdl": "GFDL",
    "all-rights-reserved": "All rights reserved",
}

# Words of the long CC names mapped to the licence elements.
_ELEMENT_WORDS = {
    "attribution": "by",
    "noncommercial": "nc",
    "non-commercial": "nc",
    "sharealike": "sa",
    "share-alike": "sa",
    "noderivs": "nd",
    "noderivatives": "nd",
    "no-derivatives": "nd",
    "no-derivs": "nd",
}


@dataclass(frozen=True)
class Licence:
    """A normalised licence: ``code`` (one of ``LICENCE_CODES``), ``version`` (``"4.0"``) and the text it came from."""

    code: str
    version: str | None = None
    raw: str = ""

    @property
    def name(self) -> str:
        """A readable name: ``"CC BY-SA 4.0"``, ``"CC0 1.0"``, ``"Public Domain"``."""
        if self.code.startswith("cc-by"):
            base = "CC " + self.code[3:].upper()
        elif self.code == "unrecognised":
            return self.raw
        else:
            base = _NAMES[self.code]
        return f"{base} {self.version}" if self.version else base

    @property
    def url(self) -> str | None:
        """The Creative Commons deed for CC licences with a version, else None."""
        if self.code.startswith("cc-by") and self.version:
            return f"https://creativecommons.org/licenses/{self.code[3:]}/{self.version}/"
        if self.code == "cc0":
            return "https://creativecommons.org/publicdomain/zero/1.0/"
        return None


def _version(text: str) -> str | None:
    match = re.search(r"(?<![\d.])(\d)\.(\d)(?![\d.])", text)
    if match:
        return f"{match.group(1)}.{match.group(2)}"
    match = re.search(r"(?:^|[-\s/])(\d)(?:$|[-\s/,])", text)
    return f"{match.group(1)}.0" if match else None


def _cc_code(elements: Iterable[str]) -> str:
    """Canonical order of CC elements: by, nc, then nd or sa."""
    present = set(elements)
    code = "cc-by"
    for element in ("nc", "nd", "sa"):
        if element in present:
            code += "-" + element
    return code


def parse_licence(text: str | None, version: str | None = None) -> Licence | None:
    """Normalise a licence string or URL; ``None`` when there is no licence information.

    ``version`` is used when ``text`` carries none (Openverse gives ``license="by"`` and
    ``license_version="2.0"`` separately). Never raises: text no rule understands gives
    ``Licence("unrecognised", raw=text)``.
    """
    if text is None or not str(text).strip():
        return None
    raw = str(text).strip()
    lower = raw.lower()
    found_version = _version(lower) or (version.strip() if version and version.strip() else None)

    # 1. URLs of creativecommons.org deeds and legal codes.
    url = re.search(r"creativecommons\.org/(licenses|publicdomain)/([a-z-]+)", lower)
    if url:
        kind, path = url.groups()
        if kind == "publicdomain":
            if path == "zero":
                return Licence("cc0", "1.0", raw)
            return Licence("public-domain", None, raw)
        elements = path.split("-")
        if elements and elements[0] == "by" and set(elements) <= {"by", "nc", "nd", "sa"}:
            return Licence(_cc_code(elements), found_version, raw)
        return Licence("unrecognised", None, raw)

    # 2. Texts and codes.
    words = lower.replace("creative commons", "cc").replace("_", " ")
    for long, element in _ELEMENT_WORDS.items():
        words = re.sub(rf"\b{re.escape(long)}\b", element, words)
    tokens = [t for t in re.split(r"[\s,;/()+-]+", words) if t]
    if not tokens:
        return Licence("unrecognised", None, raw)
    compact = "".join(tokens)
    if compact.startswith(("cc0", "cczero")) or tokens[:2] == ["cc", "0"] or "publicdomainzero" in compact:
        return Licence("cc0", "1.0", raw)
    if (
        compact in ("pd", "pdm", "publicdomain", "publicdomainmark")
        or compact.startswith(("publicdomain", "pdm"))
        or re.match(r"^pd[-\s]", lower)
    ):
        return Licence("public-domain", None, raw)
    if compact.startswith("gfdl") or "gnufreedocumentation" in compact:
        return Licence("gfdl", None, raw)
    if "allrightsreserved" in compact or compact in ("copyright", "copyrighted"):
        return Licence("all-rights-reserved", None, raw)
    elements = [t for t in tokens if t in ("by", "nc", "nd", "sa")]
    # Bare "Attribution" (Wikimedia's non-CC template) is not CC; "by" codes and versioned long names are.
    openverse_code = re.match(r"^by([-\s]|$)", lower) is not None
    is_cc = "cc" in tokens or openverse_code or (elements and found_version is not None)
    if "by" in elements and is_cc:
        return Licence(_cc_code(elements), found_version, raw)
    return Licence("unrecognised", None, raw)


def licence_codes(names: Iterable[str]) -> frozenset[str]:
    """Codes for an allow-list given by the user as codes or licence names.

    ``["cc0", "CC BY-SA", "public domain"]`` -> ``{"cc0", "cc-by-sa", "public-domain"}``.
    Raises ValueError naming anything that is not a licence this module knows.
    """
    codes: set[str] = set()
    for name in names:
        if name in LICENCE_CODES and name != "unrecognised":
            codes.add(name)
            continue
        licence = parse_licence(name)
        if licence is None or licence.code == "unrecognised":
            raise ValueError(
                f"{name!r} is not a licence this scraper knows; use one of "
                f"{sorted(LICENCE_CODES - {'unrecognised'})} or a name such as 'CC BY-SA'"
            )
        codes.add(licence.code)
    return frozenset(codes)
