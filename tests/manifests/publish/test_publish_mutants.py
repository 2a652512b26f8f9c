"""Pins of ``manifests.publish`` (``BuildSummary`` text, ``push_dataset`` calls to the Hub),
``manifests.publish.coco.export_coco`` (admitted states, output folder) and the dataset card's
statistics tables (``manifests.publish.card._stats_tables``), against a recording fake of HfApi."""

from __future__ import annotations

import inspect
import io
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest

import manifests.publish.shards as publish_module
from manifests.publish import (
    MANIFEST_PATH,
    BuildSummary,
    PublishError,
    build_dataset,
    catalogue_for,
    plan_shards,
    push_dataset,
    row_for,
    write_shard,
)
from manifests.publish.card import _stats_tables, preview_grid
from manifests.publish.coco import export_coco
from manifests.publish.hub import hub_api
from manifests.publish.selection import select_publishable

OID = "0123456789abcdef0123456789abcdef01234567"


class Hub:
    """Answers like huggingface_hub.HfApi (refs hold ``tags``), records every call."""

    def __init__(self, tags=()):
        self.tags = list(tags)
        self.calls: list[tuple[str, tuple, dict]] = []

    def create_repo(self, *args, **kwargs):
        self.calls.append(("create_repo", args, kwargs))
        return "https://huggingface.co/datasets/org/mcc"

    def list_repo_refs(self, *args, **kwargs):
        self.calls.append(("list_repo_refs", args, kwargs))
        return SimpleNamespace(tags=self.tags, branches=[])

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", (), kwargs))
        return SimpleNamespace(oid=OID, commit_url="unused")

    def create_tag(self, *args, **kwargs):
        self.calls.append(("create_tag", args, kwargs))

    def call(self, name):
        (found,) = [(args, kwargs) for n, args, kwargs in self.calls if n == name]
        return found


@pytest.fixture
def built(tmp_path) -> Path:
    """A folder with only the manifest that push_dataset reads (no build needed)."""
    out = tmp_path / "dataset"
    out.mkdir()
    manifest = {"dataset_version": "1.2.0", "records": [{}, {}], "code_version": "abc", "build_time": "now"}
    (out / MANIFEST_PATH).write_text(json.dumps(manifest))
    return out


def test_push_lists_the_refs_of_the_dataset_repo(built):
    """Existing tags are looked up in the *dataset* repo (repo_type="dataset"), not a model repo."""
    hub = Hub()
    push_dataset(built, "org/mcc", tag="v1.2.0", api=hub)
    args, kwargs = hub.call("list_repo_refs")
    assert args == ("org/mcc",) and kwargs == {"repo_type": "dataset"}


def test_push_tags_the_uploaded_commit_and_reports_it(built):
    """The tag points at the upload's commit oid, which PushResult.commit also reports."""
    hub = Hub()
    result = push_dataset(built, "org/mcc", tag="v1.2.0", api=hub)
    _, kwargs = hub.call("create_tag")
    assert kwargs["revision"] == OID and kwargs["tag"] == "v1.2.0"
    assert kwargs["tag_message"] == "MCC dataset version 1.2.0" and kwargs["repo_type"] == "dataset"
    assert result.commit == OID


def test_push_ignores_refs_without_a_name_and_refuses_an_existing_tag(built):
    """A ref object without ``name`` is not the tag (no error); a ref named ``tag`` stops the push."""
    hub = Hub(tags=[SimpleNamespace(ref="refs/tags/x"), SimpleNamespace(name="v0.9.0")])
    assert push_dataset(built, "org/mcc", tag="v1.2.0", api=hub).tag == "v1.2.0"
    hub = Hub(tags=[SimpleNamespace(ref="refs/tags/x"), SimpleNamespace(name="v1.2.0")])
    with pytest.raises(PublishError, match="already has tag 'v1.2.0'"):
        push_dataset(built, "org/mcc", tag="v1.2.0", api=hub)
    assert [n for n, _, _ in hub.calls] == ["create_repo", "list_repo_refs"]


def test_build_summary_lists_records_not_admitted_by_state(tmp_path):
    """``str(BuildSummary)`` has a line of the skipped records per state, states sorted."""
    summary = BuildSummary(
        out_dir=tmp_path,
        version="1.0.0",
        include=("reviewed",),
        rows=3,
        rows_by_subset={"2 concepts": 3},
        rows_by_split={"validation": 1, "test": 2},
        masks=6,
        shards=[],
        excluded=[],
        skipped={"segmented": 2, "planned": 1},
        folder_bytes=0,
        seconds=0.0,
    )
    lines = str(summary).splitlines()
    assert "not admitted (by state): planned 1, segmented 2" in lines
    assert "splits: validation 1, test 2" in lines
    assert lines[-1] == "excluded: 0"


def test_export_coco_admits_the_states_asked_for(small_store, tmp_path):
    """include=("reviewed", "segmented") also exports the segmented (machine-mask) record."""
    default, _ = export_coco(small_store, tmp_path / "reviewed.json")
    both, _ = export_coco(small_store, tmp_path / "both.json", include=("reviewed", "segmented"))
    reviewed_ids = {i["mcc_id"] for i in json.loads(default.read_text())["images"]}
    both_ids = {i["mcc_id"] for i in json.loads(both.read_text())["images"]}
    assert len(reviewed_ids) == 8 and len(both_ids) == 9 and reviewed_ids < both_ids
    # Without a version, the file says the same default version as a build would.
    default_version = inspect.signature(build_dataset).parameters["version"].default
    assert json.loads(default.read_text())["info"]["version"] == default_version == "0.1.0"


def test_hub_api_is_authenticated_with_the_given_token_or_hf_token(monkeypatch):
    """``hub_api`` builds an ``HfApi`` (offline: no request is made) with the token given, else HF_TOKEN."""
    monkeypatch.setenv("HF_TOKEN", "hf_from_environment")
    assert hub_api("hf_given").token == "hf_given"
    assert hub_api().token == "hf_from_environment"
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(PublishError, match="HF_TOKEN"):
        hub_api()


def test_export_coco_creates_missing_parent_folders(small_store, tmp_path):
    """The COCO file's folder is created with its parents."""
    path, _ = export_coco(small_store, tmp_path / "a" / "b" / "coco.json")
    assert path.is_file() and json.loads(path.read_text())["images"]


def test_card_scalar_statistics_table_header():
    """Top-level scalars of a statistics document: a ``| figure | value |`` table, value right-aligned."""
    (text,) = _stats_tables({"images_reviewed": 3, "by_state": {"accepted": 2}})
    lines = text.splitlines()
    assert lines[:3] == ["| figure | value |", "| --- | ---: |", "| images reviewed | 3 |"]
    assert "**by state**" in lines


def test_row_image_is_named_after_the_record(small_store):
    """A row's image carries its bytes and the path ``<record id>.png`` (the COCO file_name)."""
    item = select_publishable(small_store).items[0]
    row = row_for(item, b"png-bytes", catalogue_for([item]))
    assert row["image"] == {"bytes": b"png-bytes", "path": f"{item.record.id}.png"}
    assert row["objects"]["mask"] == [{"bytes": m.png, "path": None} for m in item.masks]


def test_coco_document_fields_and_ids(small_store, tmp_path):
    """COCO: top-level keys; images with ids 1..N and the mcc extras (id, group, source, sha256);
    annotations numbered 1..M in order, one per (image, concept)."""
    path, _ = export_coco(small_store, tmp_path / "coco.json", version="2.0.0")
    document = json.loads(path.read_text())
    assert list(document) == ["info", "licenses", "images", "annotations", "categories"]
    assert document["info"]["version"] == "2.0.0" and document["licenses"] == []
    records = {r.id: r for r in small_store.iter()}
    assert [i["id"] for i in document["images"]] == list(range(1, len(document["images"]) + 1))
    for image in document["images"]:
        record = records[image["mcc_id"]]
        assert image == {
            "id": image["id"],
            "file_name": f"{record.id}.png",
            "width": record.image.width,
            "height": record.image.height,
            "mcc_id": record.id,
            "group": record.group,
            "source": record.source.kind,
            "sha256": record.image.sha256,
        }
    annotations = document["annotations"]
    assert [a["id"] for a in annotations] == list(range(1, len(annotations) + 1))
    assert sorted(annotations[0]) == sorted(
        ["id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd", "mcc_review"]
    )


def test_write_shard_creates_its_folder_and_gives_a_huge_row_its_own_row_group(
    small_store, tmp_path, monkeypatch
):
    """``write_shard`` makes the shard's folders (parents too); a row group never holds more than
    MAX_ROW_GROUP_BYTES of rows, but always at least one row."""
    items = select_publishable(small_store).items[:3]
    (shard,) = plan_shards(items, shard_size=10, splits={it.id: "test" for it in items})
    monkeypatch.setattr(publish_module, "MAX_ROW_GROUP_BYTES", 1)  # every row is "too big"
    with ThreadPoolExecutor(max_workers=1) as pool:
        written = write_shard(
            small_store, shard, tmp_path / "new" / "folder", catalogue_for(items), pool=pool
        )
    metadata = pq.ParquetFile(tmp_path / "new" / "folder" / shard.path).metadata
    assert written.rows == 3 and metadata.num_rows == 3
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [1, 1, 1]


def test_build_refuses_a_foreign_folder_and_rebuilds_its_own(small_store, tmp_path):
    """--out: a new, an empty or a Hub-clone-only folder is fine, a folder of other files is refused,
    the folder of an earlier build is rebuilt in place."""
    (tmp_path / "empty").mkdir()
    build_dataset(small_store, tmp_path / "empty")
    (tmp_path / "clone" / ".git").mkdir(parents=True)
    build_dataset(small_store, tmp_path / "clone")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(PublishError, match="not an MCC dataset folder"):
        build_dataset(small_store, tmp_path / "foreign")
    build_dataset(small_store, tmp_path / "empty", version="0.2.0")  # its own earlier build
    assert json.loads((tmp_path / "empty" / MANIFEST_PATH).read_text())["dataset_version"] == "0.2.0"


def test_build_files_folder_bytes_manifest_format_and_preview(small_store, tmp_path):
    """folder_bytes sums every file the build wrote (shards included); manifest.json is indented by 1
    with a final newline; preview.png is the preview grid as an unoptimised PNG."""
    out = tmp_path / "dataset"
    summary = build_dataset(small_store, out, preview_rows=3)
    assert summary.folder_bytes == sum((out / f).stat().st_size for f in summary.files)
    text = (out / MANIFEST_PATH).read_text()
    assert text == json.dumps(json.loads(text), indent=1) + "\n"
    splits = {r["image_id"]: r["split"] for r in json.loads(text)["records"]}
    items = [
        item
        for shard in plan_shards(select_publishable(small_store).items, 200, splits)
        for item in shard.items
    ]
    expected = io.BytesIO()
    preview_grid(small_store, items, count=3).save(expected, format="PNG", optimize=False)
    assert (out / "preview.png").read_bytes() == expected.getvalue()


def test_manifest_keys_shards_and_not_admitted(small_store, tmp_path):
    """manifest.json: its keys, each shard's path / num_concepts / rows / bytes / sha256 as written,
    and the records not admitted counted per state (sorted)."""
    out = tmp_path / "dataset"
    summary = build_dataset(small_store, out, shard_size=3)
    manifest = json.loads((out / MANIFEST_PATH).read_text())
    assert list(manifest) == [
        "format", "dataset_version", "build_time", "code_version", "include", "splits", "validation_fraction",
        "split_rule", "configs", "shards", "records", "excluded", "not_admitted_by_state",
    ]  # fmt: skip
    assert manifest["shards"] == [
        {
            "path": s.path,
            "split": s.split,
            "num_concepts": s.num_concepts,
            "rows": s.rows,
            "bytes": s.file_bytes,
            "sha256": s.sha256,
        }
        for s in summary.shards
    ]
    assert [(s["split"], s["num_concepts"]) for s in manifest["shards"]] == [
        ("validation", 2),
        ("validation", 3),
        ("test", 2),
        ("test", 2),
        ("test", 3),
    ]  # fmt: skip  (shard_size 3: the 4 two-concept test rows take two shards)
    assert manifest["not_admitted_by_state"] == {"planned": 1, "rejected": 1, "segmented": 1}
    assert list(manifest["records"][0]) == [
        "image_id", "split", "shard", "row", "state", "image_sha256", "image_path", "review",
    ]  # fmt: skip


def test_catalogue_takes_group_concepts_and_domain_from_the_registry(small_store):
    """A record holding two of its group's three concepts still lists the whole group; a group the
    registry does not know lists the concepts its records hold, domain ``unknown``."""
    items = select_publishable(small_store).items
    husky = next(it for it in items if it.record.group == "husky-wolf-malamute")
    partial = replace(husky, record=husky.record.model_copy(update={"concepts": husky.record.concepts[:2]}))
    catalogue = catalogue_for([partial])
    assert catalogue.group_concepts["husky-wolf-malamute"] == (
        "siberian husky",
        "gray wolf",
        "alaskan malamute",
    )
    assert catalogue.domains["husky-wolf-malamute"] == "animals"
    assert catalogue.categories == ("gray wolf", "siberian husky")  # only the concepts published, sorted
    custom = replace(husky, record=husky.record.model_copy(update={"group": "my-dogs"}))
    other = catalogue_for([custom])
    assert other.group_concepts["my-dogs"] == tuple(husky.record.concept_names)
    assert other.domains["my-dogs"] == "unknown"


def test_a_build_passes_its_workers_on_stages_beside_the_output_and_times_itself(
    small_store, tmp_path, monkeypatch
):
    """``workers`` reaches the record checks; the files are written in a hidden folder named after the output
    in the output's own parent (same file system: the final rename is atomic); ``seconds`` is the build's
    wall time."""
    import time

    import manifests.publish.build as build_module

    seen = {}
    select, replace_managed = build_module.select_publishable, build_module._replace_managed

    def recording_select(*args, **kwargs):
        seen["workers"] = kwargs["workers"]
        return select(*args, **kwargs)

    def recording_replace(staging, out):
        seen["staging"] = staging
        return replace_managed(staging, out)

    monkeypatch.setattr(build_module, "select_publishable", recording_select)
    monkeypatch.setattr(build_module, "_replace_managed", recording_replace)
    out = tmp_path / "dataset"
    started = time.perf_counter()
    summary = build_dataset(small_store, out, workers=3)
    wall = time.perf_counter() - started
    assert seen["workers"] == 3
    assert seen["staging"].parent == tmp_path and seen["staging"].name.startswith(".dataset.build-")
    assert 0 < summary.seconds <= wall


def test_every_leaf_column_of_a_shard_gets_its_encoding_under_its_parquet_name(small_store, tmp_path):
    """The options name each leaf as parquet does (``objects.bbox.list.element.list.element`` for the
    fixed-size bbox list): PNG bytes uncompressed and plain, every other leaf snappy with a dictionary."""
    from manifests.publish.shards import _column_options

    out = tmp_path / "dataset"
    summary = build_dataset(small_store, out, validation_fraction=0)
    parquet = pq.ParquetFile(out / summary.shards[0].path)
    leaves = [parquet.schema.column(i).path for i in range(len(parquet.schema))]
    assert "objects.bbox.list.element.list.element" in leaves
    options = _column_options(parquet.schema_arrow)
    assert sorted(options["compression"]) == sorted(leaves)
    assert sorted(options["use_dictionary"]) == sorted(p for p in leaves if not p.endswith(".bytes"))
    row_group = parquet.metadata.row_group(0)
    for i, path in enumerate(leaves):
        expected = "UNCOMPRESSED" if path.endswith(".bytes") else "SNAPPY"
        assert row_group.column(i).compression == expected, path
