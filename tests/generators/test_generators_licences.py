"""Licence normalisation and the allow-list."""

from __future__ import annotations

import pytest

from generators.licences import DEFAULT_ALLOWED_LICENCES, licence_codes, parse_licence


@pytest.mark.parametrize(
    ("text", "version", "code", "expected_version"),
    [
        ("CC BY-SA 4.0", None, "cc-by-sa", "4.0"),
        ("cc-by-sa-4.0", None, "cc-by-sa", "4.0"),
        ("cc-by-sa-3.0,2.5,2.0,1.0", None, "cc-by-sa", "3.0"),
        ("by-sa", "2.0", "cc-by-sa", "2.0"),
        ("by", None, "cc-by", None),
        ("https://creativecommons.org/licenses/by/4.0/", None, "cc-by", "4.0"),
        ("http://creativecommons.org/licenses/by-nc-sa/2.0/deed.en", None, "cc-by-nc-sa", "2.0"),
        ("https://creativecommons.org/publicdomain/zero/1.0/", None, "cc0", "1.0"),
        ("https://creativecommons.org/publicdomain/mark/1.0/", None, "public-domain", None),
        ("Attribution-ShareAlike 4.0 International", None, "cc-by-sa", "4.0"),
        ("Creative Commons Attribution-NonCommercial-NoDerivatives 4.0", None, "cc-by-nc-nd", "4.0"),
        ("CC BY-ND 2.0", None, "cc-by-nd", "2.0"),
        ("CC0", None, "cc0", "1.0"),
        ("cc0 1.0", None, "cc0", "1.0"),
        ("Public domain", None, "public-domain", None),
        ("pdm", "1.0", "public-domain", None),
        ("PD-old-70", None, "public-domain", None),
        ("GFDL", None, "gfdl", None),
        ("All rights reserved", None, "all-rights-reserved", None),
        ("Attribution", None, "unrecognised", None),  # Wikimedia's non-CC "Attribution" template
        ("my own terms", None, "unrecognised", None),
    ],
)
def test_parse_licence(text, version, code, expected_version):
    licence = parse_licence(text, version)
    assert licence is not None
    assert (licence.code, licence.version) == (code, expected_version)
    assert licence.raw == text


def test_no_licence_is_unknown_not_unrecognised():
    assert parse_licence(None) is None
    assert parse_licence("   ") is None


def test_names_and_deed_urls():
    assert parse_licence("by-sa", "4.0").name == "CC BY-SA 4.0"
    assert parse_licence("by-sa", "4.0").url == "https://creativecommons.org/licenses/by-sa/4.0/"
    assert parse_licence("cc0").name == "CC0 1.0"
    assert parse_licence("public domain").name == "Public Domain"


def test_default_allow_list_keeps_free_licences_only():
    allowed = {"CC0", "Public domain", "CC BY 4.0", "CC BY-SA 3.0"}
    refused = {"CC BY-NC 4.0", "CC BY-ND 4.0", "CC BY-NC-SA 2.0", "GFDL", "All rights reserved"}
    assert all(parse_licence(t).code in DEFAULT_ALLOWED_LICENCES for t in allowed)
    assert not any(parse_licence(t).code in DEFAULT_ALLOWED_LICENCES for t in refused)


def test_licence_codes_from_user_names():
    assert licence_codes(["cc0", "CC BY-SA", "public domain", "by-nc"]) == {
        "cc0",
        "cc-by-sa",
        "public-domain",
        "cc-by-nc",
    }
    with pytest.raises(ValueError, match="not a licence"):
        licence_codes(["whatever licence"])
