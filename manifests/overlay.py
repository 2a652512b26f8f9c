"""Draw a record for a person: its image, each concept's mask and boxes in one colour, a legend."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from manifests.masks import decode_mask
from manifests.record import Record

# Distinct, colour-blind-friendly colours (Okabe-Ito), one per concept.
CONCEPT_COLOURS = [(230, 159, 0), (86, 180, 233), (0, 158, 115), (204, 121, 167), (213, 94, 0)]


def draw_record(record: Record, image: Image.Image, *, alpha: float = 0.45) -> Image.Image:
    """The image with mask overlays (``alpha`` opacity), box outlines and a legend strip below.

    ``image`` is the record's stored image; masks and boxes are in its pixels.
    """
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    for index, concept in enumerate(record.concepts):
        if concept.mask is None:
            continue
        mask = decode_mask(concept.mask)
        if mask.shape != base.shape[:2]:
            raise ValueError(
                f"record {record.id}: mask of {concept.name!r} is {mask.shape}, image is {base.shape[:2]}"
            )
        colour = np.array(CONCEPT_COLOURS[index % len(CONCEPT_COLOURS)], dtype=np.float32)
        base[mask] = (1 - alpha) * base[mask] + alpha * colour
    canvas = Image.fromarray(base.round().astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    width = max(2, round(min(canvas.size) / 200))
    for index, concept in enumerate(record.concepts):
        colour = CONCEPT_COLOURS[index % len(CONCEPT_COLOURS)]
        for box in concept.boxes:
            draw.rectangle(box, outline=colour, width=width)

    font = ImageFont.load_default(size=max(12, canvas.height // 40))
    line_height = font.size + 8
    legend = Image.new("RGB", (canvas.width, line_height * (len(record.concepts) + 1)), "white")
    pen = ImageDraw.Draw(legend)
    pen.text((6, 4), f"{record.id}  [{record.state.value}]  group {record.group}", fill="black", font=font)
    for index, concept in enumerate(record.concepts):
        y = line_height * (index + 1) + 4
        colour = CONCEPT_COLOURS[index % len(CONCEPT_COLOURS)]
        pen.rectangle((6, y, 6 + font.size, y + font.size), fill=colour)
        status = "no mask" if concept.mask is None else f"mask ({concept.review})"
        pen.text(
            (14 + font.size, y),
            f"{concept.name}: {len(concept.boxes)} box(es), {status}",
            fill="black",
            font=font,
        )
    out = Image.new("RGB", (canvas.width, canvas.height + legend.height), "white")
    out.paste(canvas, (0, 0))
    out.paste(legend, (0, canvas.height))
    return out
