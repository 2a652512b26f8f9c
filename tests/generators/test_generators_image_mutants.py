"""``generators.web.image`` edge cases the mutation pass found untested: format sniffing, how a
non-image is described, 16-bit scaling, palette transparency, the size bound, and the JPEG / PNG
metadata strippers' byte walking."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from generators_testserver import icc_profile, pattern_image
from PIL import Image

from generators.web.image import (
    ImageRejected,
    _describe_non_image,
    _to_8_bit,
    _to_rgb,
    _to_srgb,
    load_web_image,
    sniff_image_format,
    strip_jpeg_metadata,
    strip_png_metadata,
)


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_avif_sequences_are_sniffed_and_rejections_pickle_with_their_detail():
    assert sniff_image_format(b"\x00\x00\x00\x1cftypavis" + b"\x00" * 8) == "AVIF"
    assert sniff_image_format(b"\x00\x00\x00\x1cftypavif" + b"\x00" * 8) == "AVIF"
    assert sniff_image_format(b"\x00\x00\x00\x1cftypmp42" + b"\x00" * 8) is None
    error = pickle.loads(pickle.dumps(ImageRejected("too_small", "100x100")))
    assert (error.reason, error.detail, str(error)) == ("too_small", "100x100", "too_small: 100x100")


def test_non_images_are_described_by_what_they_are():
    assert _describe_non_image(b"  <BODY>hello</BODY>") == "an HTML document"
    assert _describe_non_image(b'<svg xmlns="http://www.w3.org/2000/svg">') == (
        "an XML/SVG document (vector images are not accepted)"
    )
    # the SVG tag is looked for in the first 64 bytes only
    assert _describe_non_image(b"x" * 61 + b"<svg>").startswith("unknown content")
    assert _describe_non_image(b"x" * 59 + b"<svg>") == "an XML/SVG document (vector images are not accepted)"


def test_sixteen_bit_greyscale_is_scaled_to_eight_bits_and_an_empty_image_stays_empty():
    values = np.array([[0, 1, 128, 129, 65535]], dtype=np.uint16)
    out = np.asarray(_to_8_bit(Image.fromarray(values)))  # mode I;16
    assert out.tolist() == [[0, 0, 0, 1, 255]]  # (v + 128) // 257
    wide = Image.fromarray(np.array([[0, 300, 70000]], dtype=np.int32), mode="I")
    assert np.asarray(_to_8_bit(wide)).tolist() == [[0, 1, 255]]
    small = Image.fromarray(np.array([[0, 7, 255]], dtype=np.int32), mode="I")
    assert np.asarray(_to_8_bit(small)).tolist() == [[0, 7, 255]]  # fits in 8 bits: as is
    # 16-bit even when every value is small
    dark = Image.fromarray(np.array([[0, 100, 200]], dtype=np.uint16))
    assert dark.mode == "I;16" and np.asarray(_to_8_bit(dark)).tolist() == [[0, 0, 1]]
    empty = Image.new("I", (0, 0))
    assert _to_8_bit(empty).size == (0, 0)


def test_palette_transparency_survives_colour_conversion_and_composites_on_white():
    palette = Image.new("P", (4, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putdata([0, 1, 0, 1])
    palette.info["transparency"] = 1
    srgb, _ = _to_srgb(palette)
    assert srgb.mode == "RGBA" and np.asarray(srgb)[0, :, 3].tolist() == [255, 0, 255, 0]
    rgb = np.asarray(_to_rgb(palette))
    assert rgb[0].tolist() == [[255, 0, 0], [255, 255, 255], [255, 0, 0], [255, 255, 255]]
    opaque = Image.new("P", (2, 1))
    opaque.putpalette([0, 255, 0] + [0] * 765)
    assert _to_srgb(opaque)[0].mode == "RGB" and np.asarray(_to_rgb(opaque))[0, 0].tolist() == [0, 255, 0]
    plain = Image.new("RGB", (2, 2), (1, 2, 3))
    assert _to_rgb(plain) is plain


def test_min_side_is_inclusive_and_the_icc_profile_converts_through_rotation_and_16_bit_scaling():
    picture = Image.new("RGB", (64, 40), (10, 200, 30))
    assert load_web_image(encoded(picture, "PNG"), min_side=40).image.size == (64, 40)
    with pytest.raises(ImageRejected, match="too_small"):
        load_web_image(encoded(picture, "PNG"), min_side=41)
    # the default bound is 512 px, inclusive
    assert load_web_image(encoded(Image.new("RGB", (512, 600)), "PNG")).image.size == (512, 600)
    with pytest.raises(ImageRejected, match="below min_side 512"):
        load_web_image(encoded(Image.new("RGB", (511, 600)), "PNG"))

    # A wide-gamut photo stored sideways (EXIF orientation 6): rotated upright, then converted from its
    # own profile, exactly as the same photo stored upright.
    wide = icc_profile("RGB ", "Wide Test RGB", gamma=2.2,
                       primaries=((0.2, 0.1, 0.0), (0.5, 0.8, 0.1), (0.27, 0.1, 0.7)))  # fmt: skip
    upright = pattern_image(3, (48, 64))
    sideways = upright.transpose(Image.Transpose.ROTATE_90)  # orientation 6 turns it back clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = load_web_image(encoded(sideways, "PNG", icc_profile=wide, exif=exif), min_side=1)
    straight = load_web_image(encoded(upright, "PNG", icc_profile=wide), min_side=1)
    assert rotated.exif_transposed and rotated.colour_profile == straight.colour_profile == "Wide Test RGB"
    assert np.array_equal(np.asarray(rotated.image), np.asarray(straight.image))
    # 16-bit greyscale is scaled into a new 8-bit image: the file's profile still converts its pixels
    gray = icc_profile("GRAY", "Linear Gray", gamma=1.0)
    ramp = Image.fromarray((np.arange(64 * 48).reshape(48, 64) * 21).astype(np.uint16))
    deep = load_web_image(encoded(ramp, "PNG", icc_profile=gray), min_side=1)
    assert deep.original_mode == "I;16" and deep.colour_profile == "Linear Gray"


def test_jpeg_stripping_walks_fill_bytes_and_keeps_short_segments_exact():
    jpeg = encoded(Image.new("RGB", (16, 16), (200, 10, 10)), "JPEG", quality=90)
    comment = b"\xff\xfe\x00\x07hello"  # COM, length 7 = 2 + 5
    assert strip_jpeg_metadata(jpeg[:2] + comment + jpeg[2:]) == jpeg
    padded = jpeg[:2] + b"\xff\xff\xff" + jpeg[2:]  # fill bytes before the next marker: valid, kept as is
    assert strip_jpeg_metadata(padded) == padded
    assert strip_jpeg_metadata(jpeg[:2] + b"\xff\xff\xff" + comment + jpeg[2:]) == jpeg
    temporary = jpeg[:2] + b"\xff\x01" + comment + jpeg[2:]  # TEM: a marker without a length, kept
    assert strip_jpeg_metadata(temporary) == jpeg[:2] + b"\xff\x01" + jpeg[2:]
    two_byte = jpeg[:2] + b"\xff\xe5\x00\x02" + jpeg[2:]  # an empty APP5 (length 2): dropped
    assert strip_jpeg_metadata(two_byte) == jpeg
    bad_length = jpeg[:2] + b"\xff\xe5\x00\x01" + jpeg[2:]
    assert strip_jpeg_metadata(bad_length) is None


def test_png_stripping_reports_untouched_files_as_themselves():
    png = encoded(Image.new("RGB", (8, 8), (0, 0, 255)), "PNG")
    assert strip_png_metadata(png) is png  # nothing to drop: the same bytes object
    iend = png.rindex(b"IEND") - 4
    with_text = png[:iend] + b"\x00\x00\x00\x05tEXtab\x00cd\x00\x00\x00\x00" + png[iend:]
    assert strip_png_metadata(with_text) == png
