"""parse_grounding on Qwen2.5-VL answers as the model writes them (and as it breaks them).

Most cases use a 1120 x 840 stored image that the processor resized to 560 x 420 (what
``max_pixels = 300 * 28 * 28`` gives), so original = 2 x input and the expected boxes
are easy to check by eye.
"""

from __future__ import annotations

import json

import pytest

from annotators.grounding import (
    GroundingParseError,
    box_iou,
    extract_objects,
    grounding_prompt,
    grounding_schema,
    map_box,
    match_label,
    parse_grounding,
)

DOGS = ["siberian husky", "gray wolf"]
INPUT = (560, 420)
ORIGINAL = (1120, 840)

CANONICAL = """```json
[
\t{"bbox_2d": [10, 20, 200, 300], "label": "siberian husky"},
\t{"bbox_2d": [250, 30, 520, 400], "label": "gray wolf"}
]
```"""
BOTH = {"siberian husky": [(20.0, 40.0, 400.0, 600.0)], "gray wolf": [(500.0, 60.0, 1040.0, 800.0)]}

CASES = [
    ("canonical fenced list", CANONICAL, BOTH),
    (
        "bare list",
        '[{"bbox_2d": [10, 20, 200, 300], "label": "siberian husky"}, '
        '{"bbox_2d": [250, 30, 520, 400], "label": "gray wolf"}]',
        BOTH,
    ),
    ("fence without language tag", CANONICAL.replace("```json", "```"), BOTH),
    (
        "prose around the fence",
        "Sure! Here are the bounding boxes of the requested objects:\n"
        + CANONICAL
        + "\nLet me know if you need anything else.",
        BOTH,
    ),
    (
        "prose, no fence",
        'The objects are at [{"bbox_2d": [10, 20, 200, 300], "label": "siberian husky"}, '
        '{"bbox_2d": [250, 30, 520, 400], "label": "gray wolf"}] in the picture.',
        BOTH,
    ),
    (
        "single object, not a list",
        '```json\n{"bbox_2d": [250, 30, 520, 400], "label": "gray wolf"}\n```',
        {"siberian husky": [], "gray wolf": [(500.0, 60.0, 1040.0, 800.0)]},
    ),
    (
        "cut off mid-list",
        '```json\n[\n\t{"bbox_2d": [10, 20, 200, 300], "label": "siberian husky"},\n'
        '\t{"bbox_2d": [250, 30, 5',
        {"siberian husky": [(20.0, 40.0, 400.0, 600.0)], "gray wolf": []},
    ),
    (
        "cut off mid-label",
        '[{"bbox_2d": [10, 20, 200, 300], "label": "siberian husky"}, '
        '{"bbox_2d": [250, 30, 520, 400], "label": "gray w',
        {"siberian husky": [(20.0, 40.0, 400.0, 600.0)], "gray wolf": []},
    ),
    (
        "bbox instead of bbox_2d",
        '[{"bbox": [10, 20, 200, 300], "label": "siberian husky"}, '
        '{"bbox": [250, 30, 520, 400], "label": "gray wolf"}]',
        BOTH,
    ),
    (
        "reversed corners",
        '[{"bbox_2d": [200, 300, 10, 20], "label": "siberian husky"}, '
        '{"bbox_2d": [520, 30, 250, 400], "label": "gray wolf"}]',
        BOTH,
    ),
    (
        "box beyond the image is clamped",
        '[{"bbox_2d": [-15, -4, 200, 300], "label": "siberian husky"}, '
        '{"bbox_2d": [250, 30, 600, 450], "label": "gray wolf"}]',
        {"siberian husky": [(0.0, 0.0, 400.0, 600.0)], "gray wolf": [(500.0, 60.0, 1120.0, 840.0)]},
    ),
    (
        "box wholly outside is dropped",
        '[{"bbox_2d": [600, 430, 700, 500], "label": "siberian husky"}, '
        '{"bbox_2d": [250, 30, 520, 400], "label": "gray wolf"}]',
        {"siberian husky": [], "gray wolf": [(500.0, 60.0, 1040.0, 800.0)]},
    ),
    (
        "degenerate box is dropped",
        '[{"bbox_2d": [10, 20, 10, 300], "label": "siberian husky"}, '
        '{"bbox_2d": [250, 30, 520, 400], "label": "gray wolf"}]',
        {"siberian husky": [], "gray wolf": [(500.0, 60.0, 1040.0, 800.0)]},
    ),
    (
        "unknown label dropped",
        '[{"bbox_2d": [10, 20, 200, 300], "label": "dog"}, '
        '{"bbox_2d": [250, 30, 520, 400], "label": "gray wolf"}]',
        {"siberian husky": [], "gray wolf": [(500.0, 60.0, 1040.0, 800.0)]},
    ),
    (
        "exact duplicates (repetition loop)",
        "[" + ", ".join(['{"bbox_2d": [250, 30, 520, 400], "label": "gray wolf"}'] * 6) + "]",
        {"siberian husky": [], "gray wolf": [(500.0, 60.0, 1040.0, 800.0)]},
    ),
    (
        "near duplicate and a second instance",
        '[{"bbox_2d": [250, 30, 520, 400], "label": "gray wolf"}, '
        '{"bbox_2d": [251, 31, 521, 399], "label": "gray wolf"}, '
        '{"bbox_2d": [10, 20, 200, 300], "label": "gray wolf"}]',
        {"siberian husky": [], "gray wolf": [(500.0, 60.0, 1040.0, 800.0), (20.0, 40.0, 400.0, 600.0)]},
    ),
    (
        "label case",
        '[{"bbox_2d": [10, 20, 200, 300], "label": "Siberian Husky"}, '
        '{"bbox_2d": [250, 30, 520, 400], "label": "GRAY WOLF"}]',
        BOTH,
    ),
    (
        "plural label",
        '[{"bbox_2d": [10, 20, 200, 300], "label": "siberian huskies"}, '
        '{"bbox_2d": [250, 30, 520, 400], "label": "gray wolves"}]',
        BOTH,
    ),
    (
        "numbered instances",
        '[{"bbox_2d": [10, 20, 200, 300], "label": "gray wolf 1"}, '
        '{"bbox_2d": [250, 30, 520, 400], "label": "gray wolf 2"}]',
        {"siberian husky": [], "gray wolf": [(20.0, 40.0, 400.0, 600.0), (500.0, 60.0, 1040.0, 800.0)]},
    ),
    (
        "article and underscore",
        '[{"bbox_2d": [10, 20, 200, 300], "label": "a siberian_husky"}, '
        '{"bbox_2d": [250, 30, 520, 400], "label": "the gray-wolf"}]',
        BOTH,
    ),
    (
        "python quotes",
        "[{'bbox_2d': [10, 20, 200, 300], 'label': 'siberian husky'}, "
        "{'bbox_2d': [250, 30, 520, 400], 'label': 'gray wolf'}]",
        BOTH,
    ),
    (
        "float coordinates",
        '[{"bbox_2d": [10.5, 20.25, 200.0, 300.0], "label": "siberian husky"}]',
        {"siberian husky": [(21.0, 40.5, 400.0, 600.0)], "gray wolf": []},
    ),
    (
        "trailing comma",
        '```json\n[\n  {"bbox_2d": [10, 20, 200, 300], "label": "siberian husky"},\n'
        '  {"bbox_2d": [250, 30, 520, 400], "label": "gray wolf"},\n]\n```',
        BOTH,
    ),
    (
        "point answers mixed in",
        '[{"point_2d": [100, 150], "label": "siberian husky"}, '
        '{"bbox_2d": [250, 30, 520, 400], "label": "gray wolf"}]',
        {"siberian husky": [], "gray wolf": [(500.0, 60.0, 1040.0, 800.0)]},
    ),
    ("answer repeated in two fences", CANONICAL + "\n\nIn summary:\n" + CANONICAL, BOTH),
    ("empty list", "```json\n[]\n```", {"siberian husky": [], "gray wolf": []}),
    ("windows newlines", CANONICAL.replace("\n", "\r\n"), BOTH),
    (
        "wrapper object",
        '{"objects": [{"bbox_2d": [10, 20, 200, 300], "label": "siberian husky"}]}',
        {"siberian husky": [(20.0, 40.0, 400.0, 600.0)], "gray wolf": []},
    ),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_parse_grounding_cases(text, expected):
    result = parse_grounding(text, DOGS, INPUT, ORIGINAL)
    assert set(result) == set(DOGS)
    assert result == {k: [pytest.approx(b) for b in v] for k, v in expected.items()}


def test_at_least_25_cases():
    assert len(CASES) >= 25


@pytest.mark.parametrize(
    ("text", "concepts", "expected"),
    [
        (
            '[{"bbox_2d": [10, 20, 200, 300], "label": "lemons"}, {"bbox_2d": [300, 20, 500, 300], "label": "Limes"}]',
            ["lemon", "lime"],
            {"lemon": [(20.0, 40.0, 400.0, 600.0)], "lime": [(600.0, 40.0, 1000.0, 600.0)]},
        ),
        (
            '[{"bbox_2d": [10, 20, 200, 300], "label": "mice"}]',
            ["mouse", "rat", "hamster"],
            {"mouse": [(20.0, 40.0, 400.0, 600.0)], "rat": [], "hamster": []},
        ),
        (
            '[{"bbox_2d": [10, 20, 200, 300], "label": "Black eyed Susans"}]',
            ["sunflower", "black-eyed susan"],
            {"sunflower": [], "black-eyed susan": [(20.0, 40.0, 400.0, 600.0)]},
        ),
        (
            '[{"bbox_2d": [10, 20, 200, 300], "label": "sea lions"}, {"bbox_2d": [300, 20, 500, 300], "label": "walrus"}]',
            ["harbor seal", "sea lion", "walrus"],
            {
                "harbor seal": [],
                "sea lion": [(20.0, 40.0, 400.0, 600.0)],
                "walrus": [(600.0, 40.0, 1000.0, 600.0)],
            },
        ),
    ],
    ids=["plural lemons/limes", "irregular plural", "hyphen and plural", "three concepts, one missing"],
)
def test_parse_grounding_other_groups(text, concepts, expected):
    assert parse_grounding(text, concepts, INPUT, ORIGINAL) == expected


def test_unscaled_resize_mapping():
    """A 1024 x 768 image at the default limits is fed as 1036 x 756 (multiples of 28)."""
    text = '[{"bbox_2d": [518, 378, 1036, 756], "label": "gray wolf"}]'
    result = parse_grounding(text, DOGS, (1036, 756), (1024, 768))
    assert result["gray wolf"] == [pytest.approx((512.0, 384.0, 1024.0, 768.0))]


@pytest.mark.parametrize(
    "text",
    [
        "There is no siberian husky in this image.",
        "",
        '```json\n[\n\t{"bbox_2d": [10, 2',
        "None",
        '{"answer": "no objects"}',
    ],
)
def test_unreadable_text_gives_empty_lists_and_extract_raises(text):
    assert parse_grounding(text, DOGS, INPUT, ORIGINAL) == {"siberian husky": [], "gray wolf": []}
    with pytest.raises(GroundingParseError):
        extract_objects(text)


def test_extract_objects_keeps_raw_input_frame_boxes():
    objects = extract_objects(CANONICAL)
    assert [(o.label, o.box) for o in objects] == [
        ("siberian husky", (10, 20, 200, 300)),
        ("gray wolf", (250, 30, 520, 400)),
    ]


def test_match_label_refuses_ambiguity_and_near_misses():
    assert match_label("husky", DOGS) is None  # a part of a name is not the name
    assert match_label("wolf", DOGS) is None
    assert match_label("Gray Wolf #2", DOGS) == "gray wolf"
    assert match_label("geese", ["mallard duck", "goose", "swan"]) == "goose"


def test_map_box_sorts_clamps_and_validates():
    assert map_box((100, 50, 20, 10), (200, 100), (400, 200)) == (40.0, 20.0, 200.0, 100.0)
    assert map_box((-10, -10, 300, 300), (200, 100), (400, 200)) == (0.0, 0.0, 400.0, 200.0)
    with pytest.raises(ValueError, match="positive"):
        map_box((0, 0, 1, 1), (0, 100), (400, 200))


def test_box_iou():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0


def test_schema_bounds_labels_coordinates_and_length():
    import jsonschema

    schema = grounding_schema(DOGS, (560, 420), max_items=3)
    good = [{"bbox_2d": [0, 0, 560, 420], "label": "gray wolf"}]
    jsonschema.validate(good, schema)
    for bad in (
        [],
        [{"bbox_2d": [0, 0, 561, 10], "label": "gray wolf"}],
        [{"bbox_2d": [0, 0, 10, 421], "label": "gray wolf"}],
        [{"bbox_2d": [0, 0, 10, 10], "label": "dog"}],
        [{"bbox_2d": [0, 0, 10], "label": "gray wolf"}],
        good * 4,
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    assert json.loads(json.dumps(schema)) == schema  # plain JSON for xgrammar


def test_prompt_names_every_concept():
    prompt = grounding_prompt(["harbor seal", "sea lion", "walrus"])
    assert all(f'"{c}"' in prompt for c in ["harbor seal", "sea lion", "walrus"])
    assert "bbox_2d" in prompt


def test_schema_every_concept_starts_with_one_box_per_concept():
    import jsonschema

    schema = grounding_schema(DOGS, (560, 420), max_items=4, every_concept=True)
    husky = {"bbox_2d": [0, 0, 10, 10], "label": "siberian husky"}
    wolf = {"bbox_2d": [20, 20, 40, 40], "label": "gray wolf"}
    jsonschema.validate([husky, wolf], schema)
    jsonschema.validate([husky, wolf, wolf], schema)  # more instances after the first round
    for bad in ([husky], [wolf, husky], [husky, husky], [husky, wolf, wolf, wolf, wolf]):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    with pytest.raises(ValueError, match="at least 2"):
        grounding_schema(DOGS, (560, 420), max_items=1, every_concept=True)
