"""The dataset card (README.md with YAML front matter) and the preview grid, generated
from the manifest: every figure in the card is counted from the published records.

The card is a pure function of its ``CardContext`` (no clock, no randomness), so a
rebuild from the same manifest writes the same card.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml
from PIL import Image

from manifests.masks import decode_mask, encode_mask
from manifests.overlay import draw_record
from manifests.provenance import PROVENANCE_KEY, is_tiny_name
from manifests.record import GeneratedSource, Record, WebSource

if TYPE_CHECKING:
    from datasets import Features

    from manifests.publish.selection import Exclusion, PublishableItem
    from manifests.publish.shards import WrittenShard
    from manifests.store import ManifestStore

PLACEHOLDER_REPO = "<org>/multi-concept-confusion"
PAPER = {
    "title": "AnchorDiff: Training-Free Concept Grounding for MM-DiTs via Anchor-Based Graph Propagation",
    "authors": ["Jian Zhang", "Zhijun Zhang"],
    "arxiv": "2605.26460",
    "year": 2026,
}
BIBTEX = f"""@article{{zhang2026anchordiff,
  title   = {{{PAPER["title"]}}},
  author  = {{{" and ".join(PAPER["authors"])}}},
  journal = {{arXiv preprint arXiv:{PAPER["arxiv"]}}},
  year    = {{{PAPER["year"]}}}
}}"""


@dataclass(frozen=True)
class CardContext:
    """Everything the card shows. ``items`` in row order; ``configs`` config -> split -> shard
    files; ``splits`` split -> images; ``coco_paths`` split -> its COCO file."""

    version: str
    repo_id: str | None
    include: tuple[str, ...]
    items: list[PublishableItem]
    configs: dict[str, list[str]]
    shards: list[WrittenShard]
    features: Features
    column_docs: dict[str, str]
    excluded: list[Exclusion]
    skipped: dict[str, int]
    review_stats: dict[str, Any] | None
    preview_path: str
    coco_paths: dict[str, str]
    splits: dict[str, int]
    split_of: dict[str, str]
    validation_fraction: float
    license_path: str


# -- preview ---------------------------------------------------------------------------
def _thumbnail(record: Record, image: Image.Image, width: int) -> tuple[Record, Image.Image]:
    """The record and its image scaled to ``width`` px (masks nearest-neighbour, boxes scaled),
    so that ``draw_record``'s legend is legible at thumbnail size."""
    scale = width / image.width
    size = (width, max(1, round(image.height * scale)))
    concepts = []
    for concept in record.concepts:
        mask = Image.fromarray(decode_mask(concept.mask)).resize(size, Image.Resampling.NEAREST)
        boxes = [tuple(v * scale for v in box) for box in concept.boxes]
        concepts.append(concept.model_copy(update={"mask": encode_mask(np.asarray(mask)), "boxes": boxes}))
    return record.model_copy(update={"concepts": concepts}), image.resize(size, Image.Resampling.BILINEAR)


def preview_grid(
    store: ManifestStore, items: list[PublishableItem], *, count: int = 8, width: int = 360, columns: int = 4
) -> Image.Image:
    """A grid of ``count`` rows spread evenly over ``items`` (row order, so two- and three-
    concept images both appear), each drawn with its masks, boxes and a legend."""
    if not items:
        raise ValueError("no rows to preview")
    count = max(1, min(count, len(items)))
    picks = sorted({round(i * (len(items) - 1) / max(1, count - 1)) for i in range(count)})
    cells = []
    for index in picks:
        record, image = _thumbnail(items[index].record, store.open_image(items[index].record), width)
        cells.append(draw_record(record, image))
    columns = min(columns, len(cells))
    rows = -(-len(cells) // columns)
    pad = 8
    cell_w = max(c.width for c in cells)
    cell_h = max(c.height for c in cells)
    grid = Image.new(
        "RGB", (columns * cell_w + (columns + 1) * pad, rows * cell_h + (rows + 1) * pad), "white"
    )
    for n, cell in enumerate(cells):
        grid.paste(cell, (pad + (n % columns) * (cell_w + pad), pad + (n // columns) * (cell_h + pad)))
    return grid


# -- figures ---------------------------------------------------------------------------
def _table(header: list[str], rows: list[list[Any]], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(header) - 1)
    marks = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "n/a"


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n < limit:
            return name
    return "100K<n<1M"


def _records(context: CardContext) -> list[Record]:
    return [item.record for item in context.items]


def _is_tiny(records: list[Record]) -> bool:
    for record in records:
        if isinstance(record.source, GeneratedSource) and is_tiny_name(record.source.model):
            return True
        for event in record.history:
            if any(
                PROVENANCE_KEY.search(k) and isinstance(v, str) and is_tiny_name(v)
                for k, v in event.params.items()
            ):
                return True
    return False


def _front_matter(context: CardContext) -> str:
    records = _records(context)
    by_file: dict[str, Any] = {s.path: s for s in context.shards}
    features_yaml = context.features._to_yaml_list()
    configs, infos = [], []
    for name, split_files in context.configs.items():
        entry: dict[str, Any] = {"config_name": name}
        if name == "default":
            entry["default"] = True
        entry["data_files"] = [
            {"split": split, "path": files if len(files) > 1 else files[0]}
            for split, files in split_files.items()
        ]
        configs.append(entry)
        shards = [by_file[f] for files in split_files.values() for f in files]
        infos.append(
            {
                "config_name": name,
                "features": features_yaml,
                "splits": [
                    {
                        "name": split,
                        "num_bytes": sum(by_file[f].num_bytes for f in files),
                        "num_examples": sum(by_file[f].rows for f in files),
                    }
                    for split, files in split_files.items()
                ],
                "download_size": sum(s.file_bytes for s in shards),
                "dataset_size": sum(s.num_bytes for s in shards),
            }
        )
    sources = sorted({r.source.kind for r in records})
    meta = {
        "pretty_name": "Multi-Concept Confusion (MCC)",
        "license": "other",
        "license_name": "per-source-terms",
        "license_link": context.license_path,
        "language": ["en"],
        "task_categories": ["image-segmentation"],
        "tags": [
            "concept-grounding",
            "concept-leakage",
            "zero-shot-segmentation",
            "diffusion-transformers",
            "benchmark",
            *(["synthetic"] if "generated" in sources else []),
        ],
        "size_categories": [_size_category(len(records))],
        "configs": configs,
        "dataset_info": infos,
    }
    text = yaml.dump(meta, Dumper=_NoAliasDumper, sort_keys=False, allow_unicode=True, width=1000)
    return "---\n" + text + "---\n"


class _NoAliasDumper(yaml.SafeDumper):
    """Writes repeated blocks (the features of each config) in full, without YAML anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _statistics(context: CardContext) -> str:
    records = _records(context)
    parts = []
    by_k: Counter[int] = Counter(r.num_concepts for r in records)
    rows = [[f"{k} concepts", by_k[k], k * by_k[k]] for k in sorted(by_k)]
    rows.append(["**total**", len(records), sum(r.num_concepts for r in records)])
    parts.append("### By number of concepts\n\n" + _table(["subset", "images", "image-concept pairs"], rows))

    by_source: Counter[str] = Counter(r.source.kind for r in records)
    pairs_source: Counter[str] = Counter()
    for r in records:
        pairs_source[r.source.kind] += r.num_concepts
    parts.append(
        "### By source\n\n"
        + _table(
            ["source", "images", "image-concept pairs"],
            [[s, by_source[s], pairs_source[s]] for s in sorted(by_source)],
        )
    )

    groups: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"concepts": [], "images": 0, "pairs": 0, "generated": 0, "web": 0}
    )
    for r in records:
        g = groups[r.group]
        for name in r.concept_names:
            if name not in g["concepts"]:
                g["concepts"].append(name)
        g["images"] += 1
        g["pairs"] += r.num_concepts
        g[r.source.kind] += 1
    parts.append(
        f"### By concept group ({len(groups)} groups)\n\n"
        + _table(
            ["group", "concepts", "images", "pairs", "generated", "web"],
            [
                [name, ", ".join(g["concepts"]), g["images"], g["pairs"], g["generated"], g["web"]]
                for name, g in sorted(groups.items())
            ],
            align="llrrrr",
        )
    )
    return "\n\n".join(parts)


def _review(context: CardContext) -> str:
    records = _records(context)
    statuses: Counter[str] = Counter(c.review for r in records for c in r.concepts)
    total = sum(statuses.values())
    human = statuses["accepted"] + statuses["edited"]
    fully = sum(all(c.review != "machine" for c in r.concepts) for r in records)
    text = [
        "Every concept mask carries its review status (`objects.review`): `accepted` (a person checked the "
        "machine mask and kept it unchanged), `edited` (a person corrected it in Label Studio) or `machine` "
        "(not reviewed by a person).",
        "",
        _table(
            ["review status", "concept masks", "share"],
            [[s, statuses[s], _pct(statuses[s], total)] for s in ("accepted", "edited", "machine")],
        ),
        "",
        f"- images whose every mask was reviewed by a person: {fully} of {len(records)} ({_pct(fully, len(records))})",
        f"- machine masks accepted unedited by reviewers: {statuses['accepted']} of {human} reviewed masks "
        f"({_pct(statuses['accepted'], human)})",
    ]
    if statuses["machine"]:
        text += [
            "",
            f"**{statuses['machine']} masks in this build were not reviewed by a person** (the build "
            f"admitted records in states {', '.join(context.include)}).",
        ]
    if context.review_stats:
        text += [
            "",
            "Review statistics recorded by `mcc review stats` (`reviews/stats.json` of the work dir; they "
            "cover every record a reviewer decided on, including those rejected in review):",
            "",
            *_stats_tables(context.review_stats),
        ]
    return "\n".join(text)


def _format_value(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return f"`{json.dumps(value, sort_keys=True)}`"
    return str(value)


def _stats_tables(stats: dict[str, Any]) -> list[str]:
    """Any JSON statistics document as Markdown, in its own key order: top-level scalars in one
    table, a mapping of scalars as a two-column table, a mapping of mappings (e.g. per group)
    as a table with one row per key."""
    blocks = []
    scalars = [[k.replace("_", " "), _format_value(v)] for k, v in stats.items() if not isinstance(v, dict)]
    if scalars:
        blocks.append(_table(["figure", "value"], scalars, align="lr"))
    for key, value in stats.items():
        if not isinstance(value, dict):
            continue
        title = f"**{key.replace('_', ' ')}**"
        if not value:
            blocks.append(f"{title}: none")
        elif all(isinstance(v, dict) for v in value.values()):
            columns = list(dict.fromkeys(c for v in value.values() for c in v))
            rows = [[name, *(_format_value(v.get(c)) for c in columns)] for name, v in value.items()]
            blocks.append(title + "\n\n" + _table(["", *(c.replace("_", " ") for c in columns)], rows))
        else:
            rows = [[k, _format_value(v)] for k, v in value.items()]  # keys are data (codes, names)
            blocks.append(title + "\n\n" + _table(["", "value"], rows))
    return ["\n\n".join(blocks)]


def _provenance(context: CardContext) -> str:
    records = _records(context)
    generated = [r for r in records if isinstance(r.source, GeneratedSource)]
    web = [r for r in records if isinstance(r.source, WebSource)]
    text = []
    if generated:
        models: Counter[str] = Counter(
            f"`{r.source.model or 'unknown'}`" + (f" @ `{r.source.revision}`" if r.source.revision else "")
            for r in generated
        )
        settings: Counter[str] = Counter(
            f"{r.source.width}x{r.source.height} px, {r.source.steps} steps, guidance {r.source.guidance}"
            for r in generated
        )
        templates: Counter[str] = Counter(r.source.template for r in generated)
        text += [
            f"### Generated images ({len(generated)})",
            "",
            "Scenes are planned from the concept groups: a scene template (how the concepts share the frame), a "
            "setting and a seed; the prompt names every concept of the group.",
            "",
            _table(["model @ revision", "images"], [[m, n] for m, n in sorted(models.items())]),
            "",
            _table(["size, steps, guidance", "images"], [[s, n] for s, n in sorted(settings.items())]),
            "",
            _table(["scene template", "images"], [[f"`{t}`", n] for t, n in sorted(templates.items())]),
            "",
            "Example prompts:",
            "",
            *[f"- `{r.source.prompt}`" for r in generated[:3] if r.source.prompt],
        ]
    if web:
        providers: Counter[str] = Counter(r.source.provider or "unknown" for r in web)
        text += [
            "",
            f"### Web images ({len(web)})",
            "",
            "Found by searching each concept group's names on openly licensed image sources; every row keeps "
            "its `url`, `page_url`, `licence` and `attribution`.",
            "",
            _table(["provider", "images"], [[p, n] for p, n in sorted(providers.items())]),
        ]
    stages: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    code_versions: set[str] = set()
    for r in records:
        seen: set[tuple[str, str, str]] = set()
        for event in r.history:
            code_versions.add(event.code_version)
            for key, value in event.params.items():
                if (
                    PROVENANCE_KEY.search(key)
                    and isinstance(value, str | int | float)
                    and len(str(value)) < 120
                ):
                    seen.add((event.stage, key, str(value)))
        for stage, key, value in seen:
            stages[(stage, key)][value] += 1
    if stages:
        rows = []
        for (stage, key), values in sorted(stages.items()):
            for value, n in sorted(values.items(), key=lambda kv: (-kv[1], kv[0]))[:5]:
                rows.append([stage, key, f"`{value}`", n])
        text += [
            "",
            "### Models and settings recorded by each stage",
            "",
            "Taken from the records' history (one entry per stage run, with its parameters):",
            "",
            _table(["stage", "parameter", "value", "images"], rows, align="lllr"),
        ]
    if code_versions:
        text += [
            "",
            "Code versions that processed these records: "
            + ", ".join(f"`{v}`" for v in sorted(code_versions))
            + ".",
        ]
    return "\n".join(text)


def _licences(context: CardContext) -> str:
    records = _records(context)
    rows: Counter[tuple[str, str]] = Counter()
    for r in records:
        if isinstance(r.source, GeneratedSource):
            rows[("generated", f"output of `{r.source.model or 'unknown'}`: see that model's licence")] += 1
        else:
            rows[("web", r.source.licence or "not recorded")] += 1
    return "\n".join(
        [
            "Images keep the terms of their source; this card cannot relicense them. Web images list their licence "
            "and the attribution it requires in every row (`licence`, `attribution`, `page_url`): keep them when "
            "you redistribute or show an image.",
            "",
            _table(
                ["source", "licence / terms", "images"],
                [[s, lic, n] for (s, lic), n in sorted(rows.items())],
                align="llr",
            ),
        ]
    )


def _build(context: CardContext) -> str:
    reasons: Counter[str] = Counter(e.reason for e in context.excluded)
    lines = [
        f"- dataset version `{context.version}`; records admitted in states: {', '.join(context.include)}",
        "- records not admitted (by state): "
        + (", ".join(f"{s} {n}" for s, n in sorted(context.skipped.items())) or "none"),
        f"- records excluded by the build's checks: {len(context.excluded)}"
        + ("" if not reasons else " (" + ", ".join(f"`{r}` {n}" for r, n in sorted(reasons.items())) + ")"),
        "- `manifest.json` lists every row's record id, split, image sha256 and review status, the build time and the "
        "code version; each record's full history (every stage, its parameters and code version) is in the MCC "
        "work dir it was built from.",
    ]
    return "\n".join(lines)


def _review_sentence(records: list[Record]) -> str:
    """What the build's masks are, counted: reviewed (accepted / corrected) or machine masks."""
    statuses: Counter[str] = Counter(c.review for r in records for c in r.concepts)
    total = sum(statuses.values())
    human = statuses["accepted"] + statuses["edited"]
    if not statuses["machine"]:
        return (
            f"people reviewed every one of the {total} masks in Label Studio ({statuses['accepted']} accepted "
            f"unchanged, {statuses['edited']} corrected)"
        )
    if not human:
        return (
            f"**no mask of this build was reviewed by a person**: all {total} are SAM2 machine masks that passed "
            "the quality gate"
        )
    return (
        f"people reviewed {human} of the {total} masks in Label Studio ({statuses['accepted']} accepted unchanged, "
        f"{statuses['edited']} corrected); **{statuses['machine']} are SAM2 machine masks no person has checked**"
    )


def _splits(context: CardContext) -> str:
    by_split: dict[str, list[Record]] = defaultdict(list)
    for item in context.items:
        by_split[context.split_of[item.id]].append(item.record)
    rows = [
        [f"`{split}`", len(by_split[split]), sum(r.num_concepts for r in by_split[split]),
         len({r.group for r in by_split[split]})]
        for split in context.splits
    ]  # fmt: skip
    return "\n".join(
        [
            _table(["split", "images", "image-concept pairs", "groups"], rows),
            "",
            f"The splits are disjoint by image. `validation` holds {100 * context.validation_fraction:.0f}% of the "
            "images, drawn within every (group, number of concepts) stratum in proportion to its size: images are "
            "ranked by the sha256 of their `image_id` and the first ones go to `validation`, so the assignment is "
            "reproducible and does not depend on row order. **Tune on `validation` and report on `test`**: "
            "`mcc sweep` tunes on `validation` and refuses `test` unless given `--allow-test`.",
        ]
    )


def render_licence(context: CardContext) -> str:
    """``LICENSE.md``, the card's ``license_link``: the terms of each source, counted."""
    return "# Licences of the Multi-Concept Confusion (MCC) dataset\n\n" + _licences(context) + "\n"


def render_card(context: CardContext) -> str:
    """The dataset card: YAML front matter (configs, features, splits) and the Markdown body."""
    records = _records(context)
    repo = context.repo_id or PLACEHOLDER_REPO
    pairs = sum(r.num_concepts for r in records)
    groups = len({r.group for r in records})
    warnings = []
    if _is_tiny(records):
        warnings.append(
            "> **Smoke-test build.** Images and masks of this build come from random-weight miniature "
            "(`tiny`) models: they are noise and prove only that the pipeline runs. Do not score "
            "methods on it."
        )
    if any(c.review == "machine" for r in records for c in r.concepts):
        warnings.append(
            '> **Contains unreviewed machine masks** (`objects.review == "machine"`); the benchmark proper '
            "holds human-reviewed masks only."
        )
    splits = list(context.splits)
    report_split = "test" if "test" in splits else splits[0]
    subsets = [name for name in context.configs if name != "default"]
    config_rows = []
    for name, split_files in context.configs.items():
        keep = {2, 3} if name == "default" else ({2} if name == "two_concepts" else {3})
        chosen = [r for r in records if r.num_concepts in keep]
        files = sum(len(f) for f in split_files.values())
        config_rows.append([f"`{name}`", len(chosen), sum(r.num_concepts for r in chosen), files])
    column_rows = [
        [f"`{name}`", f"`{_feature_type(feature)}`", context.column_docs.get(name, "")]
        for name, feature in context.features.items()
    ]
    subset_line = "".join(
        f'\nsubset = load_dataset("{repo}", "{name}", split="{report_split}")  # only {name.replace("_", "-")} images'
        for name in subsets[:1]
    )
    validation_line = (
        f'\nval = load_dataset("{repo}", split="validation")   # tune here' if "validation" in splits else ""
    )
    coco_lines = ", ".join(f"`{path}` ({split})" for split, path in context.coco_paths.items())

    body = f"""
# Multi-Concept Confusion (MCC)

{chr(10).join(warnings)}

![Preview: rows of MCC with one colour per concept mask]({context.preview_path})

MCC is a benchmark for **concept grounding among look-alikes**. Every image holds two or three visually
confusable concepts of one group (a Siberian husky, a gray wolf and an Alaskan malamute; a lemon and a lime)
and has **one binary mask per concept**. A grounding method is asked for every concept of the image and scored
on whether each concept's response stays on that concept and off the similar ones ("concept leakage"): mIoU,
mAP and accuracy on the annotated foreground, and the non-target activation ratio (NAR). The benchmark was
introduced with AnchorDiff ([arXiv:{PAPER["arxiv"]}](https://arxiv.org/abs/{PAPER["arxiv"]})).

This is version **{context.version}**: **{len(records)} images**, **{pairs} image-concept pairs**,
**{groups} concept groups**, splits {", ".join(f"`{s}` ({n} images)" for s, n in context.splits.items())}.

## Load

Requires `datasets>=4` (the features use `List`).

```python
from datasets import load_dataset

ds = load_dataset("{repo}", split="{report_split}")    # report here{validation_line}{subset_line}
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

A local copy of this folder loads the same way: `load_dataset("path/to/folder", split="{report_split}")`.
COCO tools: {coco_lines} hold the same rows as COCO instance annotations (compressed RLE masks, `bbox`,
`area` and `category_id` equal to the parquet's `objects` fields, category id = ClassLabel index + 1,
`file_name` = `<image_id>.png`; the images themselves are in the parquet shards).

**Migrating from format `mcc-dataset/1`** (one `test` split, top-level `masks` / `boxes` / `review`):
`row["masks"][k]` is now `row["objects"]["mask"][k]`, `row["boxes"][k]` is `row["objects"]["prompt_boxes"][k]`,
`row["review"][k]` is `row["objects"]["review"][k]`; `test` no longer holds every image, so figures on
`test` are not comparable with figures on an earlier build's `test`.

## Score a method

With the MCC code (`pip install` the project, see its README):

```bash
mcc score --dataset {repo} --method anchordiff --preset sd3 --model stabilityai/stable-diffusion-3-medium-diffusers --out scores/
mcc score --dataset {repo} --method my_package.my_module:my_method --out scores/   # your own method
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

{_table(["config", "images", "image-concept pairs", "parquet files"], config_rows)}

### Splits

{_splits(context)}

### Columns

{_table(["column", "type", "meaning"], column_rows, align="lll")}

Masks may overlap where one concept occludes another; a metric that needs disjoint regions must handle that
(MCC's `fg_scores` removes the target's pixels from the non-target region).

## How it was built

Concept groups (2-3 look-alike concepts each, `manifests/groups.yaml`) are expanded into scenes; images are
generated with FLUX.1-dev or found on the web under open licences; Qwen2.5-VL boxes every concept (constrained
JSON decoding); SAM2 turns each box into a mask; a quality gate rejects implausible masks; {_review_sentence(records)}.
The build checks every image against its recorded sha256 and size and every mask against its image, and writes
masks as 1-bit PNG.

{_provenance(context)}

### Review

{_review(context)}

### This build

{_build(context)}

## Statistics

{_statistics(context)}

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

{_licences(context)}

The same terms are in [`{context.license_path}`]({context.license_path}) (this card's `license_link`).

## Citation

If you use MCC, cite the paper that introduced it and name the dataset version you scored (**{context.version}**,
split `{report_split}`; `mcc score` writes both into every report):

```bibtex
{BIBTEX}
```
"""
    return _front_matter(context) + re.sub(r"\n{3,}", "\n\n", body)


def _feature_type(feature: Any) -> str:
    """A short type name for the column table: ``Image``, ``string``, ``list[Image]``, ``float64[4]``."""
    from datasets import ClassLabel, List, Value
    from datasets import Image as ImageFeature

    if isinstance(feature, ImageFeature):
        return "Image"
    if isinstance(feature, ClassLabel):
        return f"ClassLabel({feature.num_classes})"
    if isinstance(feature, dict):  # a Sequence of dicts: a dict of equal-length lists
        return "{" + ", ".join(f"{k}: {_feature_type(v)}" for k, v in feature.items()) + "}"
    if isinstance(feature, Value):
        return feature.dtype
    if isinstance(feature, List):
        inner = _feature_type(feature.feature)
        return f"list[{inner}]" if feature.length in (-1, None) else f"{inner}[{feature.length}]"
    return type(feature).__name__
