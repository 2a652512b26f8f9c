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
        ("CC BY 4", None, "cc-by", "4.0"),  # a bare major version
        ("cc by-sa 3 unported", None, "cc-by-sa", "3.0"),
        ("CC0", None, "cc0", "1.0"),
        ("cc0 1.0", None, "cc0", "1.0"),
        ("Public domain", None, "public-domain", None),
        ("pdm", "1.0", "public-domain", None),
        ("PD-old-70", None, "public-domain", None),
        ("GFDL", None, "gfdl", None),
        ("All rights reserved", None, "all-rights-reserved", None),
        ("Attribution", None, "unrecognised", None),  # Wikimedia's non-CC "Attribution" template
        ("my own terms", None, "unrecognised", None),
        # a deed that contradicts itself, and a retired CC licence
        ("https://creativecommons.org/publicdomain/zero/1.0/ (NC)", None, "unrecognised", None),
        ("https://creativecommons.org/licenses/sampling/1.0/", None, "unrecognised", None),
        ("--", None, "unrecognised", None),  # no words at all
        ("Public Domain Zero", None, "cc0", "1.0"),
        ("PD", None, "public-domain", None),
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


# Licence strings as web sources write them (Wikimedia, Openverse, Flickr, museum sites, CSV
# lists written by hand), with the code the whole text means. Every NonCommercial /
# NoDerivatives wording must end in a code with nc / nd (refused by default), never cc-by.
REAL_WORLD_LICENCES = [
    # the attacks that used to pass as CC BY
    ("CC BY Non Commercial 4.0", "cc-by-nc"),
    ("Creative Commons Attribution Non Commercial 4.0 International", "cc-by-nc"),
    ("CC BY No Derivatives 4.0", "cc-by-nd"),
    ("CC BY 4.0 (non commercial use only)", "cc-by-nc"),
    ("https://creativecommons.org/licenses/by/4.0/ (NonCommercial use only)", "cc-by-nc"),
    ("CC BY 2.0 (not for commercial use)", "cc-by-nc"),
    ("CC BY Share Alike 4.0", "cc-by-sa"),
    # NonCommercial in other spellings
    ("CC BY-NC 4.0", "cc-by-nc"),
    ("CC-BY-NC-2.0", "cc-by-nc"),
    ("cc by nc 3.0", "cc-by-nc"),
    ("Attribution-NonCommercial 4.0 International", "cc-by-nc"),
    ("Creative Commons Attribution-Noncommercial 2.5", "cc-by-nc"),
    ("CC BY 4.0, non-commercial", "cc-by-nc"),
    ("CC BY 3.0 - commercial use prohibited", "cc-by-nc"),
    ("CC BY 4.0; no commercial use", "cc-by-nc"),
    ("CC BY 4.0 (commercial use is not allowed)", "cc-by-nc"),
    ("CC BY 4.0 for personal use only", "cc-by-nc"),
    ("http://creativecommons.org/licenses/by-nc/3.0/", "cc-by-nc"),
    ("https://creativecommons.org/licenses/by/2.0/ not for commercial use", "cc-by-nc"),
    ("by-nc", "cc-by-nc"),
    # NoDerivatives in other spellings
    ("CC BY-ND 4.0", "cc-by-nd"),
    ("Attribution-NoDerivs 3.0 Unported", "cc-by-nd"),
    ("Attribution-NoDerivatives 4.0 International", "cc-by-nd"),
    ("CC BY 4.0 (no derivatives)", "cc-by-nd"),
    ("CC BY 4.0, no modifications", "cc-by-nd"),
    ("CC BY 3.0 (derivatives not allowed)", "cc-by-nd"),
    ("https://creativecommons.org/licenses/by/4.0/ - No Derivative Works", "cc-by-nd"),
    # both
    ("CC BY-NC-ND 4.0", "cc-by-nc-nd"),
    ("Attribution-NonCommercial-NoDerivatives 4.0 International", "cc-by-nc-nd"),
    ("https://creativecommons.org/licenses/by-nc-nd/2.0/", "cc-by-nc-nd"),
    ("CC BY-NC-SA 4.0", "cc-by-nc-sa"),
    ("Attribution-NonCommercial-ShareAlike 2.0 Generic", "cc-by-nc-sa"),
    ("CC BY-SA 4.0 (non-commercial)", "cc-by-nc-sa"),
    # free licences stay free
    ("CC BY 4.0", "cc-by"),
    ("Attribution 4.0 International (CC BY 4.0)", "cc-by"),
    ("CC BY 4.0, commercial use allowed", "cc-by"),
    ("https://creativecommons.org/licenses/by/4.0/deed.de", "cc-by"),
    ("CC BY-SA 3.0", "cc-by-sa"),
    ("Creative Commons Attribution-Share Alike 3.0 Unported", "cc-by-sa"),
    ("cc-by-sa-4.0", "cc-by-sa"),
    ("https://creativecommons.org/licenses/by-sa/2.5/", "cc-by-sa"),
    ("CC0 1.0 Universal (CC0 1.0) Public Domain Dedication", "cc0"),
    ("https://creativecommons.org/publicdomain/zero/1.0/", "cc0"),
    ("Public Domain Mark 1.0", "public-domain"),
    ("PD-US-expired", "public-domain"),
    # contradictions and the rest are refused
    ("Public domain (non-commercial use only)", "unrecognised"),
    ("CC0 - no commercial use", "unrecognised"),
    ("https://creativecommons.org/publicdomain/zero/1.0/ (no derivatives)", "unrecognised"),
    ("GFDL, non commercial", "unrecognised"),
    ("Free for non-commercial use", "unrecognised"),
    ("Royalty free", "unrecognised"),
    ("© 2019 Jane Doe. All rights reserved.", "all-rights-reserved"),
]


@pytest.mark.parametrize(("text", "code"), REAL_WORLD_LICENCES)
def test_real_world_licence_strings(text, code):
    assert parse_licence(text).code == code


def test_no_restrictive_licence_passes_the_default_allow_list():
    restrictive = [t for t, code in REAL_WORLD_LICENCES if "nc" in code.split("-") or "nd" in code.split("-")]
    assert len(restrictive) >= 25
    assert [t for t in restrictive if parse_licence(t).code in DEFAULT_ALLOWED_LICENCES] == []


def test_share_alike_is_kept_in_the_name_published():
    assert parse_licence("CC BY Share Alike 4.0").name == "CC BY-SA 4.0"
    assert parse_licence("CC BY 4.0 (non commercial use only)").name == "CC BY-NC 4.0"
