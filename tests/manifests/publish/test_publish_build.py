"""build_dataset: the folder loads with `datasets`, holds the manifest's masks exactly, configs
filter, rebuilds are byte-identical, and every record left out is counted with its reason."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
import yaml
from datasets import concatenate_datasets, load_dataset
from PIL import Image
from publish_records import make_record

from manifests import ManifestStore, State, decode_mask
from manifests.publish import MANIFEST_FORMAT, PublishError, build_dataset, dataset_features


def test_load_dataset_restores_features_and_every_mask(small_store, tmp_path, cache_dir):
    out = tmp_path / "dataset"
    summary = build_dataset(small_store, out, version="1.2.0", shard_size=2)
    assert summary.rows_by_split == {"validation": 2, "test": 6}  # round(0.2 x 8)

    splits = {
        split: load_dataset(str(out), split=split, cache_dir=cache_dir) for split in ("validation", "test")
    }
    reviewed = sorted((r.num_concepts, r.id) for r in small_store.iter(State.reviewed))
    seen = []
    for ds in splits.values():
        names = ds.features["objects"]["category_id"].feature.names
        assert ds.features == dataset_features(names)
        order = [(row["num_concepts"], row["image_id"]) for row in ds]
        assert order == sorted(order)  # by number of concepts, then id, within a split
        seen += [row["image_id"] for row in ds]
    assert sorted(seen) == sorted(i for _, i in reviewed) and summary.rows == 8  # disjoint, complete

    categories = splits["test"].features["objects"]["category_id"].feature
    assert categories.names == sorted(categories.names, key=lambda n: (_group_of(small_store, n), n))
    for row in (row for ds in splits.values() for row in ds):
        record = small_store.get(row["image_id"])
        objects = row["objects"]
        assert row["concepts"] == record.concept_names == objects["concept"]
        assert row["group"] == record.group
        assert (row["width"], row["height"]) == (record.image.width, record.image.height)
        assert objects["review"] == [c.review for c in record.concepts]
        assert row["source"] == record.source.kind
        assert row["image"].size == (record.image.width, record.image.height)
        assert np.array_equal(
            np.asarray(row["image"].convert("RGB")), np.asarray(small_store.open_image(record))
        )
        assert set(record.concept_names) <= set(row["group_concepts"])
        for k, concept in enumerate(record.concepts):
            mask = decode_mask(concept.mask)
            assert objects["mask"][k].mode == "1"
            assert np.array_equal(np.asarray(objects["mask"][k]), mask)
            assert objects["prompt_boxes"][k] == [list(b) for b in concept.boxes]
            ys, xs = np.nonzero(mask)
            tight = [
                float(xs.min()),
                float(ys.min()),
                float(xs.max() - xs.min() + 1),
                float(ys.max() - ys.min() + 1),
            ]
            assert objects["bbox"][k] == tight and objects["area"][k] == int(mask.sum())
            assert categories.int2str(objects["category_id"][k]) == concept.name
        if record.source.kind == "generated":
            assert row["generator"] == "black-forest-labs/FLUX.1-dev@0ef5fff"
            assert row["seed"] == record.source.seed and row["prompt"] == record.source.prompt
            assert row["url"] is None
        else:
            assert row["url"] == record.source.url and row["licence"] == "CC BY 4.0"
            assert row["attribution"] == record.source.attribution and row["generator"] is None

    # images are embedded as stored: same bytes as the work dir's file (and its sha256)
    stored = {r.id: r.image.sha256 for r in small_store.iter() if r.image is not None}
    for ds in splits.values():
        table = ds.with_format("arrow")[:]
        for image_id, image in zip(table["image_id"].to_pylist(), table["image"].to_pylist(), strict=True):
            assert hashlib.sha256(image["bytes"]).hexdigest() == stored[image_id]


def _group_of(store, concept: str) -> str:
    return next(r.group for r in store.iter(State.reviewed) if concept in r.concept_names)


def test_coco_and_parquet_agree_field_by_field(small_store, tmp_path, cache_dir):
    from pycocotools import mask as mask_utils

    out = tmp_path / "dataset"
    summary = build_dataset(small_store, out, shard_size=3)
    for split, path in summary.coco_paths.items():
        coco = json.loads(path.read_text())
        ds = load_dataset(str(out), split=split, cache_dir=cache_dir)
        names = ds.features["objects"]["category_id"].feature.names
        assert [c["name"] for c in coco["categories"]] == names
        assert [c["id"] for c in coco["categories"]] == list(range(1, len(names) + 1))
        assert [im["mcc_id"] for im in coco["images"]] == ds["image_id"]
        annotations = {}
        for ann in coco["annotations"]:
            annotations.setdefault(ann["image_id"], []).append(ann)
        for image, row in zip(coco["images"], ds, strict=True):
            assert (image["width"], image["height"]) == (row["width"], row["height"])
            assert image["group"] == row["group"] and image["source"] == row["source"]
            anns = annotations[image["id"]]
            objects = row["objects"]
            assert len(anns) == len(objects["concept"])
            for k, ann in enumerate(anns):
                assert ann["category_id"] == objects["category_id"][k] + 1
                assert ann["bbox"] == objects["bbox"][k] and ann["area"] == objects["area"][k]
                assert ann["mcc_review"] == objects["review"][k]
                rle = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}
                assert np.array_equal(mask_utils.decode(rle).astype(bool), np.asarray(objects["mask"][k]))


def test_splits_are_stratified_deterministic_and_optional(small_store, tmp_path, cache_dir):
    a = build_dataset(small_store, tmp_path / "a", validation_fraction=0.5)
    build_dataset(small_store, tmp_path / "b", validation_fraction=0.5)
    manifest_a = json.loads((tmp_path / "a" / "manifest.json").read_text())
    manifest_b = json.loads((tmp_path / "b" / "manifest.json").read_text())
    split_a = {r["image_id"]: r["split"] for r in manifest_a["records"]}
    assert split_a == {r["image_id"]: r["split"] for r in manifest_b["records"]}
    assert a.rows_by_split == {"validation": 4, "test": 4}
    assert manifest_a["splits"] == {"validation": 4, "test": 4} and manifest_a["validation_fraction"] == 0.5
    for k in (2, 3):  # each number of concepts is in both splits
        assert {s for i, s in split_a.items() if small_store.get(i).num_concepts == k} == {
            "validation",
            "test",
        }
    single = build_dataset(small_store, tmp_path / "c", validation_fraction=0)
    assert (
        single.rows_by_split == {"test": 8}
        and not (tmp_path / "c" / "coco" / "instances_validation.json").exists()
    )
    card = yaml.safe_load((tmp_path / "c" / "README.md").read_text().split("---")[1])
    assert {f["split"] for c in card["configs"] for f in c["data_files"]} == {"test"}
    with pytest.raises(PublishError, match="validation fraction"):
        build_dataset(small_store, tmp_path / "d", validation_fraction=1.0)


def test_configs_filter_by_number_of_concepts(small_store, tmp_path, cache_dir):
    out = tmp_path / "dataset"
    build_dataset(small_store, out, shard_size=2, validation_fraction=0)
    two = load_dataset(str(out), "two_concepts", split="test", cache_dir=cache_dir)
    three = load_dataset(str(out), "three_concepts", split="test", cache_dir=cache_dir)
    default = load_dataset(str(out), "default", split="test", cache_dir=cache_dir)
    assert set(two["num_concepts"]) == {2} and two.num_rows == 5
    assert set(three["num_concepts"]) == {3} and three.num_rows == 3
    assert list(default["image_id"]) == list(two["image_id"]) + list(three["image_id"])
    # shards never mix subsets and follow the Hub naming
    shards = sorted(p.name for p in (out / "data").iterdir())
    assert shards == [f"test-{i:05d}-of-00005.parquet" for i in range(5)]
    build_dataset(small_store, out, shard_size=2)  # with a validation split: numbered per split
    assert sorted(p.name for p in (out / "data").iterdir()) == [
        *(f"test-{i:05d}-of-00003.parquet" for i in range(3)),
        *(f"validation-{i:05d}-of-00002.parquet" for i in range(2)),
    ]
    for config in ("two_concepts", "three_concepts"):
        for split in ("validation", "test"):
            ds = load_dataset(str(out), config, split=split, cache_dir=cache_dir)
            assert set(ds["num_concepts"]) == {2 if config == "two_concepts" else 3}


def test_rebuild_is_byte_identical(small_store, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    build_dataset(small_store, first, shard_size=3)
    build_dataset(small_store, second, shard_size=3, workers=1)  # thread count does not change bytes
    build_dataset(small_store, first, shard_size=3, workers=3)  # rebuilding in place too
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for relative in files:
        if relative.name == "manifest.json":
            a, b = (json.loads((d / relative).read_text()) for d in (first, second))
            a.pop("build_time"), b.pop("build_time")
            assert a == b
        else:
            assert (first / relative).read_bytes() == (second / relative).read_bytes(), relative


def test_manifest_traces_every_row(small_store, tmp_path):
    out = tmp_path / "dataset"
    summary = build_dataset(small_store, out, version="2.0.0", shard_size=3)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == MANIFEST_FORMAT and manifest["dataset_version"] == "2.0.0"
    assert manifest["code_version"] and manifest["build_time"]
    assert len(manifest["records"]) == summary.rows
    for entry in manifest["records"]:
        record = small_store.get(entry["image_id"])
        assert entry["image_sha256"] == record.image.sha256
        assert entry["shard"].startswith(f"data/{entry['split']}-") and entry["split"] in (
            "validation",
            "test",
        )
    for shard in manifest["shards"]:
        assert hashlib.sha256((out / shard["path"]).read_bytes()).hexdigest() == shard["sha256"]
    assert manifest["not_admitted_by_state"] == {"planned": 1, "rejected": 1, "segmented": 1}


def test_include_unreviewed_admits_machine_masks(small_store, tmp_path, cache_dir):
    reviewed_only = build_dataset(small_store, tmp_path / "a")
    assert reviewed_only.skipped == {"planned": 1, "rejected": 1, "segmented": 1}
    summary = build_dataset(small_store, tmp_path / "b", include=("reviewed", "segmented"))
    assert summary.rows == reviewed_only.rows + 1
    assert summary.skipped == {"planned": 1, "rejected": 1}
    ds = concatenate_datasets(
        [
            load_dataset(str(tmp_path / "b"), split=split, cache_dir=cache_dir)
            for split in ("validation", "test")
        ]
    )
    machine = [row for row in ds if "machine" in row["objects"]["review"]]
    assert [row["image_id"] for row in machine] == ["gen-2-0008"]
    assert "Contains unreviewed machine masks" in (tmp_path / "b" / "README.md").read_text()
    with pytest.raises(PublishError, match="only"):
        build_dataset(small_store, tmp_path / "c", include=("planned",))


def test_bad_records_are_excluded_with_reasons(tmp_path, cache_dir):
    store = ManifestStore(tmp_path / "work")
    for i in range(3):
        make_record(store, i)
    bad_counts = make_record(store, 10)
    bad_counts.concepts[0].mask = bad_counts.concepts[0].mask.model_copy(update={"counts": "!!not-rle"})
    store.put(bad_counts)
    wrong_size = make_record(store, 11)
    wrong_size.concepts[1].mask = wrong_size.concepts[1].mask.model_copy(update={"size": (10, 10)})
    store.put(wrong_size)
    no_mask = make_record(store, 12)
    no_mask.concepts[1].mask = None
    store.put(no_mask)
    tampered = make_record(store, 13)
    store.write_bytes(tampered.image.path, store.read_bytes(tampered.image.path) + b"x")
    missing = make_record(store, 14)
    (tmp_path / "work" / missing.image.path).unlink()
    resized = make_record(store, 15)
    small = io.BytesIO()
    Image.new("RGB", (8, 8)).save(small, format="PNG")
    store.write_bytes(resized.image.path, small.getvalue())
    store.put(
        resized.model_copy(
            update={
                "image": resized.image.model_copy(
                    update={"sha256": hashlib.sha256(small.getvalue()).hexdigest()}
                )
            }
        )
    )
    empty = make_record(store, 16)
    empty.concepts[0].mask = empty.concepts[0].mask.model_copy(
        update={"counts": __import__("manifests").encode_mask(np.zeros((56, 72), bool)).counts}
    )
    store.put(empty)
    store.write_bytes("records/gen-broken.json", b"{not json")

    out = tmp_path / "dataset"
    summary = build_dataset(store, out)
    reasons = {e.record_id: e.reason for e in summary.excluded}
    assert reasons == {
        bad_counts.id: "mask_undecodable",
        wrong_size.id: "mask_size_mismatch",
        no_mask.id: "mask_missing",
        tampered.id: "image_sha256_mismatch",
        missing.id: "image_missing",
        resized.id: "image_size_mismatch",
        empty.id: "mask_empty",
        "gen-broken": "unreadable_record",
    }
    assert summary.rows == 3
    assert (
        summary.rows + len(summary.excluded) + sum(summary.skipped.values()) == 11
    )  # every record file counted
    text = str(summary)
    assert "excluded: 8" in text and "mask_undecodable 1" in text and bad_counts.id in text
    manifest = json.loads((out / "manifest.json").read_text())
    assert {e["record_id"]: e["reason"] for e in manifest["excluded"]} == reasons
    assert (
        sum(load_dataset(str(out), split=s, cache_dir=cache_dir).num_rows for s in ("validation", "test"))
        == 3
    )


def test_nothing_to_publish_and_foreign_folders_are_refused(small_store, tmp_path):
    with pytest.raises(PublishError, match="--include-unreviewed"):
        build_dataset(ManifestStore(tmp_path / "empty"), tmp_path / "out")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep me")
    with pytest.raises(PublishError, match="not an MCC dataset folder"):
        build_dataset(small_store, foreign)
    assert (foreign / "thesis.tex").read_text() == "keep me"


def test_rebuild_with_fewer_shards_leaves_no_stale_shard(small_store, tmp_path, cache_dir):
    out = tmp_path / "dataset"
    build_dataset(small_store, out, shard_size=1, validation_fraction=0)
    assert len(list((out / "data").iterdir())) == 8
    (out / ".gitattributes").write_text("*.parquet filter=lfs\n")  # a Hub clone's files are kept
    (out / "notes.txt").write_text("mine")  # and so are a user's files in a built folder
    build_dataset(small_store, out, shard_size=100, validation_fraction=0)
    assert sorted(p.name for p in (out / "data").iterdir()) == [
        "test-00000-of-00002.parquet",
        "test-00001-of-00002.parquet",
    ]
    assert (out / ".gitattributes").exists() and (out / "notes.txt").read_text() == "mine"
    assert load_dataset(str(out), split="test", cache_dir=cache_dir).num_rows == 8


def test_card_front_matter_and_statistics(small_store, tmp_path):
    stats = {  # the layout `mcc review stats` writes (annotators/review_stats.py)
        "records": {"reviewed": 8, "rejected_in_review": 1, "in_review": 0},
        "masks": {"reviewed": 19, "accepted_unedited": 17, "edited": 2, "fraction_accepted_unedited": 0.8947},
        "records_all_accepted": 0.875,
        "iou_mean": 0.9812,
        "iou_by_group": {"lemon-lime": {"masks": 10, "mean_iou": 0.97, "min_iou": 0.9}},
        "rejection_reasons": {"rejected_by_reviewer": 1},
    }
    small_store.write_bytes("reviews/stats.json", json.dumps(stats).encode())
    out = tmp_path / "dataset"
    build_dataset(small_store, out, repo_id="my-org/mcc", shard_size=2, validation_fraction=0.25)
    text = (out / "README.md").read_text()
    front = yaml.safe_load(text.split("---\n")[1])
    configs = {c["config_name"]: c for c in front["configs"]}
    assert set(configs) == {"default", "two_concepts", "three_concepts"} and configs["default"]["default"]
    infos = {i["config_name"]: i for i in front["dataset_info"]}
    validation, test = infos["default"]["splits"]
    assert (validation["name"], validation["num_examples"], test["name"], test["num_examples"]) == (
        "validation", 2, "test", 6,
    )  # fmt: skip
    assert validation["num_bytes"] + test["num_bytes"] == infos["default"]["dataset_size"]
    assert sum(s["num_examples"] for s in infos["three_concepts"]["splits"]) == 3
    assert [f["split"] for f in configs["default"]["data_files"]] == ["validation", "test"]
    assert (
        front["license_link"] == "LICENSE.md"
        and "| web | CC BY 4.0 | 2 |" in (out / "LICENSE.md").read_text()
    )
    assert "| `validation` | 2 |" in text and "| `test` | 6 |" in text and "--allow-test" in text
    assert 'val = load_dataset("my-org/mcc", split="validation")' in text
    assert "Requires `datasets>=4`" in text and "## Intended use and limitations" in text
    assert "## Personal information" in text and "Migrating from format `mcc-dataset/1`" in text
    assert 'heatmaps = my_method(row["image"], row["concepts"])' in text  # one call with all concepts
    assert (
        "people reviewed every one of the 19 masks in Label Studio (17 accepted unchanged, 2 corrected)"
        in text
    )
    assert "&id" not in text  # no YAML anchors
    assert 'load_dataset("my-org/mcc", split="test")' in text
    assert "| 2 concepts | 5 | 10 |" in text and "| 3 concepts | 3 | 9 |" in text
    assert "| husky-wolf-malamute | siberian husky, gray wolf, alaskan malamute | 3 | 9 | 2 | 1 |" in text
    assert "| records all accepted | 0.875 |" in text and "| iou mean | 0.9812 |" in text
    assert "|  | masks | mean iou | min iou |" in text and "| lemon-lime | 10 | 0.97 | 0.9 |" in text
    assert "| fraction_accepted_unedited | 0.8947 |" in text and "| rejected_by_reviewer | 1 |" in text
    assert "AnchorDiff: Training-Free Concept Grounding" in text and "Jian Zhang and Zhijun Zhang" in text
    assert "| web | CC BY 4.0 | 2 |" in text
    assert "![Preview" in text and "(preview.png)" in text
    preview = Image.open(out / "preview.png")
    assert preview.width > 4 * 300 and preview.height > 2 * 200


def test_a_build_never_changes_record_states(small_store, tmp_path):
    """There is no ``published`` state: a build reads records and leaves every file as it was."""
    before = {
        record_id: small_store.read_bytes(f"records/{record_id}.json") for record_id in small_store.ids()
    }
    build_dataset(small_store, tmp_path / "a")
    assert {
        record_id: small_store.read_bytes(f"records/{record_id}.json") for record_id in small_store.ids()
    } == before
    assert "published" not in {state.value for state in State}


def test_a_hub_clone_folder_and_a_new_nested_folder_are_valid_outputs(small_store, tmp_path):
    """A fresh clone of the Hub repo (only .git, .gitattributes, .cache, .huggingface) is built into;
    an output folder whose parents do not exist yet is created with them."""
    clone = tmp_path / "clone"
    (clone / ".git").mkdir(parents=True)
    (clone / ".gitattributes").write_text("*.parquet filter=lfs\n")
    (clone / ".huggingface").mkdir()
    summary = build_dataset(small_store, clone)
    assert summary.rows > 0 and (clone / ".gitattributes").read_text() == "*.parquet filter=lfs\n"
    nested = tmp_path / "a" / "b" / "dataset"
    assert build_dataset(small_store, nested).rows == summary.rows and (nested / "manifest.json").is_file()


def test_coco_info_names_the_benchmark_and_its_version(small_store, tmp_path):
    out = tmp_path / "out"
    summary = build_dataset(small_store, out, version="2.1.0")
    for path in summary.coco_paths.values():
        info = json.loads(path.read_text())["info"]
        assert info["description"] == "Multi-Concept Confusion (MCC) benchmark" and info["version"] == "2.1.0"
