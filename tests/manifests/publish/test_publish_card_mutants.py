"""The dataset card (``manifests.publish.card``) of a build with reviewed and machine-mask records, pinned
whole: the Markdown body line by line (warning, loading snippet, structure and column tables,
provenance, review, build, statistics and licence sections), the YAML front matter's fields that
the Hub reads (configs, data files, dataset_info sizes, size category, tags), and the preview
grid (which rows it picks and where it pastes them)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from fixture_scopes import shared_unless_mutating
from publish_records import make_record

from manifests import ManifestStore, State
from manifests.overlay import draw_record
from manifests.publish import CARD_PATH, build_dataset, dataset_features
from manifests.publish.card import _size_category, _thumbnail, preview_grid
from manifests.publish.selection import select_publishable


@pytest.fixture(scope=shared_unless_mutating)
def store(tmp_path_factory) -> ManifestStore:
    """6 two-concept records (one web, one edited, one segmented with machine masks) and 3
    three-concept ones (one web)."""
    store = ManifestStore(tmp_path_factory.mktemp("card") / "work")
    for i in range(5):
        make_record(store, i, num_concepts=2, web=(i == 3), review="edited" if i == 1 else "accepted")
    for i in range(5, 8):
        make_record(store, i, num_concepts=3, web=(i == 6), size=(64, 48))
    make_record(store, 8, num_concepts=2, state=State.segmented, review="machine")
    return store


@pytest.fixture(scope=shared_unless_mutating)
def build(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("card") / "dataset"
    summary = build_dataset(store, out, version="1.0.0", include=("reviewed", "segmented"))
    front, body = (out / CARD_PATH).read_text("utf-8").removeprefix("---\n").split("\n---\n", 1)
    return summary, yaml.safe_load(front), body


def test_card_body_line_by_line(build):
    """Every line of the card's Markdown body (the records' code versions aside)."""
    _, _, body = build
    body = re.sub(r"processed these records: `[^`]*`\.", "processed these records: CODE_VERSIONS.", body)
    assert body.splitlines() == EXPECTED_BODY.splitlines()


def test_card_front_matter(build):
    """The Hub metadata: names, licence, tags, size category, one config per subset with its
    data files per split, and per config the features and each split's sizes summed over its shards."""
    summary, meta, _ = build
    shards = {s.path: s for s in summary.shards}
    val_two, val_three = sorted(p for p in shards if p.startswith("data/validation-"))
    two, three = sorted(p for p in shards if p.startswith("data/test-"))
    assert list(meta) == [
        "pretty_name", "license", "license_name", "license_link", "language", "task_categories", "tags",
        "size_categories", "configs", "dataset_info",
    ]  # fmt: skip
    assert meta["pretty_name"] == "Multi-Concept Confusion (MCC)"
    assert (meta["license"], meta["license_name"], meta["license_link"]) == (
        "other",
        "per-source-terms",
        "LICENSE.md",
    )
    assert meta["tags"] == ["concept-grounding", "concept-leakage", "zero-shot-segmentation", "diffusion-transformers",
                            "benchmark", "synthetic"]  # fmt: skip
    assert meta["size_categories"] == ["n<1K"]
    assert meta["configs"] == [
        {"config_name": "default", "default": True, "data_files": [
            {"split": "validation", "path": [val_two, val_three]}, {"split": "test", "path": [two, three]}]},
        {"config_name": "two_concepts", "data_files": [
            {"split": "validation", "path": val_two}, {"split": "test", "path": two}]},
        {"config_name": "three_concepts", "data_files": [
            {"split": "validation", "path": val_three}, {"split": "test", "path": three}]},
    ]  # fmt: skip
    files = {
        "default": {"validation": [val_two, val_three], "test": [two, three]},
        "two_concepts": {"validation": [val_two], "test": [two]},
        "three_concepts": {"validation": [val_three], "test": [three]},
    }
    names = ["alaskan malamute", "gray wolf", "siberian husky", "lemon", "lime"]  # (group, concept) order
    for info in meta["dataset_info"]:
        chosen = files[info["config_name"]]
        every = [shards[f] for paths in chosen.values() for f in paths]
        assert info == {
            "config_name": info["config_name"],
            "features": dataset_features(names)._to_yaml_list(),
            "splits": [
                {
                    "name": split,
                    "num_bytes": sum(shards[f].num_bytes for f in paths),
                    "num_examples": sum(shards[f].rows for f in paths),
                }
                for split, paths in chosen.items()
            ],  # fmt: skip
            "download_size": sum(s.file_bytes for s in every),
            "dataset_size": sum(s.num_bytes for s in every),
        }
    assert [i["config_name"] for i in meta["dataset_info"]] == ["default", "two_concepts", "three_concepts"]


def test_preview_grid_spreads_rows_and_pastes_them_in_place(store):
    """``count`` rows spread evenly over the items (first and last included), ``columns`` a row,
    each cell the record drawn at thumbnail width, 8 px apart."""
    items = sorted(select_publishable(store, ("reviewed", "segmented")).items, key=lambda it: it.id)
    grid = preview_grid(store, items, count=3, width=40, columns=2)
    cells = [
        draw_record(*_thumbnail(items[i].record, store.open_image(items[i].record), 40)) for i in (0, 4, 8)
    ]
    cell_w, cell_h = max(c.width for c in cells), max(c.height for c in cells)
    assert grid.size == (2 * cell_w + 3 * 8, 2 * cell_h + 3 * 8)
    for n, cell in enumerate(cells):
        left, top = 8 + (n % 2) * (cell_w + 8), 8 + (n // 2) * (cell_h + 8)
        pasted = grid.crop((left, top, left + cell.width, top + cell.height))
        assert np.array_equal(np.asarray(pasted), np.asarray(cell.convert("RGB"))), n
    assert preview_grid(store, items[:2], count=8, width=40).width == 2 * cells[0].width + 3 * 8


EXPECTED_BODY = """
# Multi-Concept Confusion (MCC)

> **Contains unreviewed machine masks** (`objects.review == "machine"`); the benchmark proper holds human-reviewed masks only.

![Preview: rows of MCC with one colour per concept mask](preview.png)

MCC is a benchmark for **concept grounding among look-alikes**. Every image holds two or three visually
confusable concepts of one group (a Siberian husky, a gray wolf and an Alaskan malamute; a lemon and a lime)
and has **one binary mask per concept**. A grounding method is asked for every concept of the image and scored
on whether each concept's response stays on that concept and off the similar ones ("concept leakage"): mIoU,
mAP and accuracy on the annotated foreground, and the non-target activation ratio (NAR). The benchmark was
introduced with AnchorDiff ([arXiv:2605.26460](https://arxiv.org/abs/2605.26460)).

This is version **1.0.0**: **9 images**, **21 image-concept pairs**,
**2 concept groups**, splits `validation` (2 images), `test` (7 images).

## Load

Requires `datasets>=4` (the features use `List`).

```python
from datasets import load_dataset

ds = load_dataset("<org>/multi-concept-confusion", split="test")    # report here
val = load_dataset("<org>/multi-concept-confusion", split="validation")   # tune here
subset = load_dataset("<org>/multi-concept-confusion", "two_concepts", split="test")  # only two-concepts images
row = ds[0]
row["image"]                       # PIL image, row["width"] x row["height"]
row["concepts"]                    # e.g. ['siberian husky', 'gray wolf']: query a method with all of them
objects = row["objects"]           # one entry per concept, aligned with row["concepts"]
objects["mask"][0]                 # PIL image, mode "1": numpy.array(...) is an (H, W) bool mask of concepts[0]
objects["bbox"][0]                 # the mask's tight box, COCO XYWH pixels; objects["area"][0] its pixels
objects["category_id"][0]          # ClassLabel: ds.features["objects"]["category_id"].feature.int2str(...)
objects["prompt_boxes"][0]         # the Qwen2.5-VL boxes SAM2 was prompted with, XYXY pixels
objects["review"][0]               # accepted / edited / machine
```

A local copy of this folder loads the same way: `load_dataset("path/to/folder", split="test")`.
COCO tools: `coco/instances_validation.json` (validation), `coco/instances_test.json` (test) hold the same rows as COCO instance annotations (compressed RLE masks, `bbox`,
`area` and `category_id` equal to the parquet's `objects` fields, category id = ClassLabel index + 1,
`file_name` = `<image_id>.png`; the images themselves are in the parquet shards).

**Migrating from format `mcc-dataset/1`** (one `test` split, top-level `masks` / `boxes` / `review`):
`row["masks"][k]` is now `row["objects"]["mask"][k]`, `row["boxes"][k]` is `row["objects"]["prompt_boxes"][k]`,
`row["review"][k]` is `row["objects"]["review"][k]`; `test` no longer holds every image, so figures on
`test` are not comparable with figures on an earlier build's `test`.

## Score a method

With the MCC code (`pip install` the project, see its README):

```bash
mcc score --dataset <org>/multi-concept-confusion --method anchordiff --preset sd3 --model stabilityai/stable-diffusion-3-medium-diffusers --out scores/
mcc score --dataset <org>/multi-concept-confusion --method my_package.my_module:my_method --out scores/   # your own method
```

Or in your own loop, exactly as `mcc score` does it: the method is called **once per image with all its
concepts** and returns one heatmap per concept (methods that compare or normalise across concepts give other
numbers when called one concept at a time):

```python
import numpy as np
from benchmark.metrics import fg_scores

for row in ds:
    masks = np.stack([np.array(m, dtype=bool) for m in row["objects"]["mask"]])   # (K, H, W) bool
    heatmaps = my_method(row["image"], row["concepts"])                          # (K, h, w), any resolution
    for k, concept in enumerate(row["concepts"]):
        scores = fg_scores(heatmaps[k], masks, k)                                # miou_fg, map_fg, acc_fg, nar
```

`mcc score` also reports chance rows (a constant and a uniform random map on the same pairs), bootstrap 95%
confidence intervals over images and the leakage between the concepts of each group.

## Structure

| config | images | image-concept pairs | parquet files |
| --- | ---: | ---: | ---: |
| `default` | 9 | 21 | 4 |
| `two_concepts` | 6 | 12 | 2 |
| `three_concepts` | 3 | 9 | 2 |

### Splits

| split | images | image-concept pairs | groups |
| --- | ---: | ---: | ---: |
| `validation` | 2 | 5 | 2 |
| `test` | 7 | 16 | 2 |

The splits are disjoint by image. `validation` holds 20% of the images, drawn within every (group, number of concepts) stratum in proportion to its size: images are ranked by the sha256 of their `image_id` and the first ones go to `validation`, so the assignment is reproducible and does not depend on row order. **Tune on `validation` and report on `test`**: `mcc sweep` tunes on `validation` and refuses `test` unless given `--allow-test`.

### Columns

| column | type | meaning |
| --- | --- | --- |
| `image_id` | `string` | the record id in the MCC manifest (`gen-...` generated, `web-...` web) |
| `image` | `Image` | the image (PNG as stored by the pipeline) |
| `width` | `int32` | image width in pixels |
| `height` | `int32` | image height in pixels |
| `concepts` | `list[string]` | the 2 or 3 confusable concepts present in the image, the list a method is queried with |
| `objects` | `{concept: list[string], category_id: list[ClassLabel(5)], mask: list[Image], bbox: list[float64[4]], area: list[int64], prompt_boxes: list[list[float64[4]]], review: list[string]}` | one entry per concept, aligned with `concepts`: `concept`, `category_id` (ClassLabel over every concept of the build), `mask` (1-bit PNG, image size), `bbox` (the mask's tight box, COCO XYWH pixels), `area` (mask pixels), `prompt_boxes` (the Qwen2.5-VL boxes SAM2 was prompted with, XYXY pixels) and `review` (`accepted` human-checked and unchanged, `edited` human-corrected, `machine` not reviewed) |
| `group` | `string` | the confusable concept group (e.g. `husky-wolf-malamute`) |
| `group_concepts` | `list[string]` | every concept of the group, including those not in this image |
| `domain` | `string` | the group's domain (e.g. `animals`) |
| `num_concepts` | `int32` | 2 or 3 |
| `source` | `string` | `generated` or `web` |
| `generator` | `string` | generated images: the model and revision (`model@revision`) |
| `prompt` | `string` | generated images: the prompt |
| `seed` | `int64` | generated images: the seed |
| `url` | `string` | web images: the image URL |
| `page_url` | `string` | web images: the page the image was found on |
| `licence` | `string` | web images: the licence stated by the source |
| `attribution` | `string` | web images: the attribution the licence requires |

Masks may overlap where one concept occludes another; a metric that needs disjoint regions must handle that
(MCC's `fg_scores` removes the target's pixels from the non-target region).

## How it was built

Concept groups (2-3 look-alike concepts each, `manifests/groups.yaml`) are expanded into scenes; images are
generated with FLUX.1-dev or found on the web under open licences; Qwen2.5-VL boxes every concept (constrained
JSON decoding); SAM2 turns each box into a mask; a quality gate rejects implausible masks; people reviewed 19 of the 21 masks in Label Studio (17 accepted unchanged, 2 corrected); **2 are SAM2 machine masks no person has checked**.
The build checks every image against its recorded sha256 and size and every mask against its image, and writes
masks as 1-bit PNG.

### Generated images (7)

Scenes are planned from the concept groups: a scene template (how the concepts share the frame), a setting and a seed; the prompt names every concept of the group.

| model @ revision | images |
| --- | ---: |
| `black-forest-labs/FLUX.1-dev` @ `0ef5fff` | 7 |

| size, steps, guidance | images |
| --- | ---: |
| 64x48 px, 28 steps, guidance 3.5 | 2 |
| 72x56 px, 28 steps, guidance 3.5 | 5 |

| scene template | images |
| --- | ---: |
| `side-by-side` | 7 |

Example prompts:

- `a photo of a siberian husky and a gray wolf and a alaskan malamute side by side, seed 7`
- `a photo of a lemon and a lime side by side, seed 0`
- `a photo of a lemon and a lime side by side, seed 1`

### Web images (2)

Found by searching each concept group's names on openly licensed image sources; every row keeps its `url`, `page_url`, `licence` and `attribution`.

| provider | images |
| --- | ---: |
| openverse | 2 |

### Models and settings recorded by each stage

Taken from the records' history (one entry per stage run, with its parameters):

| stage | parameter | value | images |
| --- | --- | --- | ---: |
| generate | model | `black-forest-labs/FLUX.1-dev` | 9 |
| localize | model | `Qwen/Qwen2.5-VL-7B-Instruct` | 9 |
| segment | model | `facebook/sam2.1-hiera-large` | 9 |

Code versions that processed these records: CODE_VERSIONS.

### Review

Every concept mask carries its review status (`objects.review`): `accepted` (a person checked the machine mask and kept it unchanged), `edited` (a person corrected it in Label Studio) or `machine` (not reviewed by a person).

| review status | concept masks | share |
| --- | ---: | ---: |
| accepted | 17 | 81.0% |
| edited | 2 | 9.5% |
| machine | 2 | 9.5% |

- images whose every mask was reviewed by a person: 8 of 9 (88.9%)
- machine masks accepted unedited by reviewers: 17 of 19 reviewed masks (89.5%)

**2 masks in this build were not reviewed by a person** (the build admitted records in states reviewed, segmented).

### This build

- dataset version `1.0.0`; records admitted in states: reviewed, segmented
- records not admitted (by state): none
- records excluded by the build's checks: 0
- `manifest.json` lists every row's record id, split, image sha256 and review status, the build time and the code version; each record's full history (every stage, its parameters and code version) is in the MCC work dir it was built from.

## Statistics

### By number of concepts

| subset | images | image-concept pairs |
| --- | ---: | ---: |
| 2 concepts | 6 | 12 |
| 3 concepts | 3 | 9 |
| **total** | 9 | 21 |

### By source

| source | images | image-concept pairs |
| --- | ---: | ---: |
| generated | 7 | 16 |
| web | 2 | 5 |

### By concept group (2 groups)

| group | concepts | images | pairs | generated | web |
| --- | --- | ---: | ---: | ---: | ---: |
| husky-wolf-malamute | siberian husky, gray wolf, alaskan malamute | 3 | 9 | 2 | 1 |
| lemon-lime | lemon, lime | 6 | 12 | 5 | 1 |

## Intended use and limitations

- **Intended use**: measuring how well concept-grounding and open-vocabulary segmentation methods keep
  look-alike concepts apart (leakage), on images where the confusable concepts appear together. It is an
  evaluation set: tune on `validation`, report on `test`, and do not train on either.
- **Not a general segmentation benchmark**: the concept vocabulary is the listed groups only, and each image
  holds 2-3 concepts of one group; results do not transfer to scene parsing or to concepts outside the groups.
- Generated images are FLUX.1-dev outputs and carry its biases and artefacts (object counts, composition,
  texture); web images come from openly licensed sources and over-represent what those sources host.
- Masks are SAM2 outputs from Qwen2.5-VL boxes, then reviewed as stated above; borders are as precise as
  SAM2 and the reviewer's brush, and thin structures (fur, whiskers, stems) are approximate.
- Concepts are named in English only; a group's names were chosen by the dataset authors and a concept may
  have other common names.

## Personal information

Web images may show people (bystanders, owners with their animals) and can carry identifying context in
their `page_url` and `attribution`. The pipeline strips EXIF, XMP and other metadata (GPS included) from every
web image, keeps only the attribution the licence requires, and removes credentials from URLs; it does not blur
faces or detect people. To have an image removed, open a discussion on the dataset's Hub page naming its
`image_id`; it will be dropped from the next version.

## Licences

Images keep the terms of their source; this card cannot relicense them. Web images list their licence and the attribution it requires in every row (`licence`, `attribution`, `page_url`): keep them when you redistribute or show an image.

| source | licence / terms | images |
| --- | --- | ---: |
| generated | output of `black-forest-labs/FLUX.1-dev`: see that model's licence | 7 |
| web | CC BY 4.0 | 2 |

The same terms are in [`LICENSE.md`](LICENSE.md) (this card's `license_link`).

## Citation

If you use MCC, cite the paper that introduced it and name the dataset version you scored (**1.0.0**,
split `test`; `mcc score` writes both into every report):

```bibtex
@article{zhang2026anchordiff,
  title   = {AnchorDiff: Training-Free Concept Grounding for MM-DiTs via Anchor-Based Graph Propagation},
  author  = {Jian Zhang and Zhijun Zhang},
  journal = {arXiv preprint arXiv:2605.26460},
  year    = {2026}
}
```
"""


@pytest.mark.parametrize(
    ("n", "category"),
    [(1, "n<1K"), (999, "n<1K"), (1_000, "1K<n<10K"), (9_999, "1K<n<10K"), (10_000, "10K<n<100K"),
     (99_999, "10K<n<100K"), (100_000, "100K<n<1M")],
)  # fmt: skip
def test_size_category_boundaries(n, category):
    """The Hub's ``size_categories`` bins: 1000 images is already ``1K<n<10K``."""
    assert _size_category(n) == category


def test_review_section_with_review_stats_keeps_the_status_table(small_store, tmp_path):
    """With ``reviews/stats.json`` in the work dir the Review section shows the per-status table
    first, then the recorded review statistics as tables."""
    stats = {"records_decided": 9, "rejected": 1, "by_reason": {"wrong_concept": 1}}
    small_store.write_bytes("reviews/stats.json", json.dumps(stats).encode())
    build_dataset(small_store, tmp_path / "dataset", version="1.0.0")
    card = (tmp_path / "dataset" / CARD_PATH).read_text("utf-8")
    review = card.split("### Review\n\n", 1)[1].split("\n\n### This build", 1)[0]
    assert review.startswith("Every concept mask carries its review status (`objects.review`)")
    assert "| review status | concept masks | share |" in review
    assert review.index("| review status |") < review.index(
        "Review statistics recorded by `mcc review stats`"
    )
    assert review.endswith(
        "| figure | value |\n| --- | ---: |\n| records decided | 9 |\n| rejected | 1 |\n\n"
        "**by reason**\n\n|  | value |\n| --- | ---: |\n| wrong_concept | 1 |"
    )


def test_this_build_section_counts_skipped_and_excluded_records(small_store, tmp_path):
    """ "This build" names the admitted states, the records not admitted per state and the
    records the checks excluded, with their reasons (sorted, each with its count)."""
    for index in (20, 21):
        missing = make_record(small_store, index)
        (Path(small_store.workdir) / missing.image.path).unlink()
    tampered = make_record(small_store, 22)
    small_store.write_bytes(tampered.image.path, small_store.read_bytes(tampered.image.path) + b"x")
    build_dataset(small_store, tmp_path / "dataset", version="1.0.0")
    card = (tmp_path / "dataset" / CARD_PATH).read_text("utf-8")
    section = card.split("### This build\n\n", 1)[1].split("\n\n## Statistics", 1)[0].splitlines()
    assert section[:3] == [
        "- dataset version `1.0.0`; records admitted in states: reviewed",
        "- records not admitted (by state): planned 1, rejected 1, segmented 1",
        "- records excluded by the build's checks: 3 (`image_missing` 2, `image_sha256_mismatch` 1)",
    ]


def test_a_build_from_tiny_models_opens_with_the_smoke_test_warning(tmp_path):
    """A record generated by a ``tiny`` model, or one whose history names a tiny localiser / segmenter,
    makes the card open with the smoke-test warning, word for word; a real-model build has none."""
    from manifests.publish.card import _is_tiny

    store = ManifestStore(tmp_path / "work")
    real = make_record(store, 0)
    assert not _is_tiny([real])
    by_history = make_record(store, 1)
    by_history.history[-1].params["segmenter_model"] = "tiny"
    assert _is_tiny([real, by_history])
    generated = make_record(store, 2)
    generated.source.model = "tiny"
    assert _is_tiny([generated])
    store.put(generated)
    build_dataset(store, tmp_path / "out", version="0.0.1")
    body = (tmp_path / "out" / CARD_PATH).read_text("utf-8").split("\n---\n", 1)[1]
    warning = (
        "> **Smoke-test build.** Images and masks of this build come from random-weight miniature (`tiny`) "
        "models: they are noise and prove only that the pipeline runs. Do not score methods on it."
    )
    assert warning in body.splitlines()


def test_provenance_names_a_model_without_a_revision_alone_and_orders_equal_counts_by_value(tmp_path):
    """A generator without a revision is listed as just its model; per stage parameter, values with as
    many images are listed in value order (the card is rebuilt byte-identical)."""
    from types import SimpleNamespace

    from manifests.publish.card import _provenance

    store = ManifestStore(tmp_path / "work")
    records = [make_record(store, i) for i in range(3)]
    records[0].source.revision = None
    for record, model in zip(records, ("zeta-seg", "alpha-seg", "alpha-seg"), strict=True):
        record.history[-1].params["segmenter_model"] = model
    records.append(make_record(store, 3))
    records[3].history[-1].params["segmenter_model"] = "beta-seg"
    text = _provenance(SimpleNamespace(items=[SimpleNamespace(record=r) for r in records]))  # what it reads
    assert "| `black-forest-labs/FLUX.1-dev` | 1 |" in text
    assert "| `black-forest-labs/FLUX.1-dev` @ `0ef5fff` | 3 |" in text
    stage = records[0].history[-1].stage
    rows = [line for line in text.splitlines() if line.startswith(f"| {stage} | segmenter_model |")]
    assert rows == [f"| {stage} | segmenter_model | `alpha-seg` | 2 |", f"| {stage} | segmenter_model | `beta-seg` | 1 |",
                    f"| {stage} | segmenter_model | `zeta-seg` | 1 |"]  # fmt: skip


def test_provenance_lists_every_code_version_and_web_images_without_a_provider(tmp_path):
    """Two code versions are both named (sorted, comma-separated); a web image whose provider is not known
    is counted as ``unknown``."""
    from types import SimpleNamespace

    from manifests.publish.card import _provenance

    store = ManifestStore(tmp_path / "work")
    records = [make_record(store, 0), make_record(store, 1, web=True), make_record(store, 2, web=True)]
    records[1].source.provider = None
    for record, version in zip(records, ("bbb222", "aaa111", "aaa111"), strict=True):
        for event in record.history:
            event.code_version = version
    stage = records[0].history[-1].stage
    # values of 120 characters or more are left out
    records[0].history[-1].params["segmenter_model"] = "m" * 119
    records[1].history[-1].params["segmenter_model"] = "n" * 120
    text = _provenance(SimpleNamespace(items=[SimpleNamespace(record=r) for r in records]))
    assert text.splitlines()[-1] == "Code versions that processed these records: `aaa111`, `bbb222`."
    assert f"| {stage} | segmenter_model | `{'m' * 119}` | 1 |" in text.splitlines() and "n" * 120 not in text
    assert "| unknown | 1 |" in text.splitlines()


def test_a_thumbnail_scales_the_image_bilinearly_and_the_boxes_and_masks_with_it(store):
    """Width 24 of a 64 px wide image: the image is PIL's bilinear resize, each box is scaled by 24 / 64,
    each mask is the nearest-neighbour resize of the full mask."""
    from PIL import Image

    from manifests.masks import decode_mask

    item = sorted(select_publishable(store, ("reviewed",)).items, key=lambda it: it.id)[0]
    image = store.open_image(item.record)
    record, thumbnail = _thumbnail(item.record, image, 24)
    size = (24, round(image.height * 24 / image.width))
    assert np.array_equal(np.asarray(thumbnail), np.asarray(image.resize(size, Image.Resampling.BILINEAR)))
    scale = 24 / image.width
    for small, full in zip(record.concepts, item.record.concepts, strict=True):
        assert small.boxes == [tuple(v * scale for v in box) for box in full.boxes] and full.boxes
        expected = Image.fromarray(decode_mask(full.mask)).resize(size, Image.Resampling.NEAREST)
        assert np.array_equal(decode_mask(small.mask), np.asarray(expected))


def test_a_card_without_a_validation_split_loads_the_test_split_only(store, tmp_path):
    """validation_fraction=0: the snippet's ``ds`` line is followed directly by the subset line."""
    out = tmp_path / "dataset"
    build_dataset(store, out, include=("reviewed",), validation_fraction=0)
    lines = (out / CARD_PATH).read_text("utf-8").splitlines()
    at = lines.index('ds = load_dataset("<org>/multi-concept-confusion", split="test")    # report here')
    assert lines[at + 1].startswith('subset = load_dataset("<org>/multi-concept-confusion", "two_concepts"')
    assert not any(line.startswith("val = ") for line in lines)


def test_the_licence_file_opens_with_its_title(build):
    summary, _, _ = build
    text = (summary.out_dir / "LICENSE.md").read_text("utf-8")
    assert text.splitlines()[0] == "# Licences of the Multi-Concept Confusion (MCC) dataset"
