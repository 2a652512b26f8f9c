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

# Restrictive and share-alike terms, in every spelling seen on the web, read anywhere in
# the text (also after a deed URL): "NonCommercial", "non commercial", "Non-Commercial",
# "not for commercial use", "no commercial use", "commercial use prohibited"; "NoDerivs",
# "No Derivatives", "no-derivative works", "no modifications"; "ShareAlike", "Share Alike".
_NC_PATTERN = re.compile(
    r"\bnc\b|\bnon[\s_-]*commercial|\bnot[\s_-]+(?:for[\s_-]+)?commercial|\bno[\s_-]+commercial"
    r"|commercial[\s_-]+(?:use[\s_-]+)?(?:is[\s_-]+)?(?:not[\s_-]+(?:allowed|permitted)|prohibited|forbidden)"
    r"|\bpersonal[\s_-]+use[\s_-]+only|\beducational[\s_-]+use[\s_-]+only"
)
_ND_PATTERN = re.compile(
    r"\bnd\b|\bno[\s_-]*deriv|\bnot[\s_-]+(?:for[\s_-]+)?(?:derivative|modification)|\bno[\s_-]+modifications?"
    r"|(?:derivatives|modifications?)[\s_-]+(?:are[\s_-]+)?(?:not[\s_-]+(?:allowed|permitted)|prohibited|forbidden)"
)
_SA_PATTERN = re.compile(r"\bsa\b|\bshare[\s_-]*alike")


def restriction_elements(text: str) -> set[str]:
    """The CC elements ``nc`` / ``nd`` / ``sa`` that ``text`` states anywhere, in any spelling.

    ``"CC BY 4.0 (non commercial use only)"`` -> ``{"nc"}``; ``"CC BY Share Alike 4.0"`` -> ``{"sa"}``.
    """
    lower = text.lower()
    found = set()
    for element, pattern in (("nc", _NC_PATTERN), ("nd", _ND_PATTERN), ("sa", _SA_PATTERN)):
        if pattern.search(lower):
            found.add(element)
    return found


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

    The whole text is read: a NonCommercial, NoDerivatives or ShareAlike term anywhere in
    it (``restriction_elements``, any spelling, also after a deed URL) is part of the
    code, so ``"CC BY 4.0 (non commercial use only)"`` is ``cc-by-nc``, never ``cc-by``.
    A public-domain, CC0 or GFDL text that also states such a restriction contradicts
    itself and is ``unrecognised`` (refused by default). ``version`` is used when
    ``text`` carries none (Openverse gives ``license="by"`` and ``license_version="2.0"``
    separately). Never raises: text no rule understands gives
    ``Licence("unrecognised", raw=text)``.
    """
    if text is None or not str(text).strip():
        return None
    raw = str(text).strip()
    lower = raw.lower()
    found_version = _version(lower) or (version.strip() if version and version.strip() else None)
    restrictions = restriction_elements(lower)

    # 1. URLs of creativecommons.org deeds and legal codes.
    url = re.search(r"creativecommons\.org/(licenses|publicdomain)/([a-z-]+)", lower)
    if url:
        kind, path = url.groups()
        rest = lower[: url.start()] + lower[url.end() :]  # the words around the URL
        if kind == "publicdomain":
            if restriction_elements(rest) & {"nc", "nd"}:
                return Licence("unrecognised", None, raw)
            return Licence("cc0", "1.0", raw) if path == "zero" else Licence("public-domain", None, raw)
        elements = path.split("-")
        if elements and elements[0] == "by" and set(elements) <= {"by", "nc", "nd", "sa"}:
            return Licence(_cc_code([*elements, *restriction_elements(rest)]), found_version, raw)
        return Licence("unrecognised", None, raw)

    # 2. Texts and codes.
    words = lower.replace("creative commons", "cc").replace("_", " ")
    tokens = [t for t in re.split(r"[\s,;/()+-]+", words) if t]
    if not tokens:
        return Licence("unrecognised", None, raw)
    compact = "".join(tokens)
    restricted = bool(restrictions & {"nc", "nd"})
    if compact.startswith(("cc0", "cczero")) or tokens[:2] == ["cc", "0"] or "publicdomainzero" in compact:
        return Licence("unrecognised", None, raw) if restricted else Licence("cc0", "1.0", raw)
    if (
        compact in ("pd", "pdm", "publicdomain", "publicdomainmark")
        or compact.startswith(("publicdomain", "pdm"))
        or re.match(r"^pd[-\s]", lower)
    ):
        return Licence("unrecognised", None, raw) if restricted else Licence("public-domain", None, raw)
    if compact.startswith("gfdl") or "gnufreedocumentation" in compact:
        return Licence("unrecognised", None, raw) if restricted else Licence("gfdl", None, raw)
    if "allrightsreserved" in compact or compact in ("copyright", "copyrighted"):
        return Licence("all-rights-reserved", None, raw)
    attribution = "by" in tokens or "attribution" in tokens
    # Bare "Attribution" (Wikimedia's non-CC template) is not CC; "by" codes and versioned long names are.
    openverse_code = re.match(r"^by([-\s]|$)", lower) is not None
    is_cc = "cc" in tokens or openverse_code or (attribution and found_version is not None)
    if attribution and is_cc:
        return Licence(_cc_code(["by", *restrictions]), found_version, raw)
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
