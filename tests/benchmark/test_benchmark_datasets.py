"""The loaders on fixtures written in the real formats: an MCC parquet folder, an HDF5
``gtsegs_ijcv.mat`` and a PascalVOC 2012 tree."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from benchmark_fixtures import make_mcc_rows, write_format1_folder, write_gtsegs, write_mcc_folder, write_voc

from benchmark import datasets as loaders
from benchmark.datasets import (
    ImageNetSegmentation,
    InvalidSample,
    MCCDataset,
    VOCSingleClass,
    detect_benchmark,
    open_dataset,
)

# ---------------------------------------------------------------------------------- MCC


def test_mcc_folder_loads_samples_with_masks_and_tags(mcc_dataset):
    rows = make_mcc_rows()
    assert len(mcc_dataset) == 5
    assert [k.sample_id for k in mcc_dataset.sample_keys()] == [r["image_id"] for r in rows]
    assert [k.num_concepts for k in mcc_dataset.sample_keys()] == [2, 3, 2, 3, 2]
    for index, row in enumerate(rows):
        sample = mcc_dataset[index]
        assert sample.concepts == tuple(row["concepts"])
        assert sample.masks.dtype == bool and sample.masks.shape == (len(row["concepts"]), 48, 48)
        for k, mask in enumerate(row["objects"]["mask"]):
            assert np.array_equal(sample.masks[k], np.array(mask, dtype=bool))
        assert np.array_equal(np.asarray(sample.image), np.asarray(row["image"]))
        assert sample.tags["num_concepts"] == str(len(row["concepts"]))
        assert sample.tags["source"] == row["source"] and sample.tags["group"] == row["group"]
    info = mcc_dataset.describe()
    assert info["pairs"] == 12 and info["config"] == "default" and info["protocol"] == "fg"


@pytest.mark.parametrize(
    ("config", "ids"),
    [("two_concepts", ["img-00", "img-02", "img-04"]), ("three_concepts", ["img-01", "img-03"])],
)
def test_mcc_configs_select_by_number_of_concepts(mcc_folder, tmp_path, config, ids):
    dataset = MCCDataset(mcc_folder, config=config, cache_dir=tmp_path / "cache")
    assert [k.sample_id for k in dataset.sample_keys()] == ids
    assert all(len(sample.concepts) == (2 if config == "two_concepts" else 3) for sample in dataset)
    assert dataset.name == f"mcc/{config}"


def test_mcc_rejects_unknown_config_and_foreign_folders(mcc_folder, tmp_path):
    with pytest.raises(ValueError, match="unknown MCC config"):
        MCCDataset(mcc_folder, config="four_concepts")
    from datasets import Dataset

    other = tmp_path / "other"
    (other / "data").mkdir(parents=True)
    Dataset.from_dict({"text": ["a"]}).to_parquet(str(other / "data" / "test-00000-of-00001.parquet"))
    with pytest.raises(ValueError, match="not an MCC dataset"):
        MCCDataset(other, cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="cannot load the MCC dataset"):
        MCCDataset(tmp_path / "missing", cache_dir=tmp_path / "cache")


def test_mcc_two_splits_load_offline_with_their_own_images(mcc_two_splits, tmp_path):
    test = MCCDataset(mcc_two_splits, cache_dir=tmp_path / "cache")
    validation = MCCDataset(mcc_two_splits, split="validation", cache_dir=tmp_path / "cache")
    assert [k.sample_id for k in test.sample_keys()] == [f"img-{i:02d}" for i in range(5)]
    assert [k.sample_id for k in validation.sample_keys()] == ["val-00", "val-01", "val-02"]
    assert validation.describe()["split"] == "validation" and validation.describe()["pairs"] == 7
    assert validation[1].masks.shape == (3, 48, 48)
    from benchmark.datasets import MissingSplitError

    with pytest.raises(MissingSplitError, match="'train' split"):
        MCCDataset(mcc_two_splits, split="train", cache_dir=tmp_path / "cache")


def test_mcc_describe_counts_reviews_and_reads_the_manifest(tmp_path):
    rows = make_mcc_rows(3)
    rows[1]["objects"]["review"] = ["edited", "machine", "machine"]
    folder = write_mcc_folder(tmp_path / "m", rows)
    (folder / "manifest.json").write_text(
        '{"format": "mcc-dataset/2", "dataset_version": "2.1.0", "code_version": "0.9"}'
    )
    info = MCCDataset(folder, cache_dir=tmp_path / "cache").describe()
    assert info["review"] == {"accepted": 4, "edited": 1, "machine": 2}
    assert (info["dataset_version"], info["code_version"], info["format"]) == (
        "2.1.0",
        "0.9",
        "mcc-dataset/2",
    )
    assert info["generators"] == ["flux"]
    two = MCCDataset(folder, config="two_concepts", cache_dir=tmp_path / "cache").describe()
    assert two["review"] == {"accepted": 4}  # rows 0 and 2 only
    (folder / "manifest.json").unlink()
    assert MCCDataset(folder, cache_dir=tmp_path / "cache2").describe()["dataset_version"] == "unknown"


def test_mcc_format1_folders_still_load(tmp_path):
    rows = make_mcc_rows(3)
    dataset = MCCDataset(write_format1_folder(tmp_path / "old", rows), cache_dir=tmp_path / "cache")
    assert [k.sample_id for k in dataset.sample_keys()] == ["img-00", "img-01", "img-02"]
    for index, row in enumerate(rows):
        for k, mask in enumerate(row["objects"]["mask"]):
            assert np.array_equal(dataset[index].masks[k], np.array(mask, dtype=bool))
    assert dataset.describe()["review"] == {"accepted": 7}


def test_mcc_mask_of_the_wrong_size_is_an_invalid_sample(tmp_path):
    rows = make_mcc_rows(2)
    rows[1]["objects"]["mask"][0] = rows[1]["objects"]["mask"][0].resize((24, 24))
    dataset = MCCDataset(write_mcc_folder(tmp_path / "bad", rows), cache_dir=tmp_path / "cache")
    assert dataset[0].sample_id == "img-00"
    with pytest.raises(InvalidSample, match="img-01"):
        dataset[1]


# ---------------------------------------------------------------------------------- ImageNet-Segmentation


@pytest.fixture
def gtsegs(tmp_path):
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 255, (30, 40, 3), dtype=np.uint8),
        rng.integers(0, 255, (20, 16, 3), dtype=np.uint8),
    ]
    masks = [np.zeros((30, 40), bool), np.zeros((20, 16), bool)]
    masks[0][5:20, 3:12] = True  # not symmetric: a transposition would show
    masks[1][:4, :] = True
    path = write_gtsegs(tmp_path / "gtsegs_ijcv.mat", images, masks, ["n02085620_1234", "n01440764_99"])
    return path, images, masks


def test_imagenet_segmentation_reads_the_hdf5_layout(gtsegs):
    path, images, masks = gtsegs
    dataset = ImageNetSegmentation(path, class_names={"n02085620": "chihuahua", "n01440764_99": "tench"})
    assert len(dataset) == 2 and dataset.protocol == "binary"
    for index in range(2):
        sample = dataset[index]
        assert np.array_equal(np.asarray(sample.image), images[index])  # (H, W, 3), not transposed
        assert sample.masks.shape == (1, *masks[index].shape)
        assert np.array_equal(sample.masks[0], masks[index])
    assert dataset[0].concepts == ("chihuahua",) and dataset[1].concepts == ("tench",)
    assert dataset[0].tags["synset"] == "n02085620"


def test_imagenet_class_names_from_a_json_file_or_a_clear_error(gtsegs, tmp_path, monkeypatch):
    path, _, _ = gtsegs
    names = tmp_path / "names.json"
    names.write_text('{"n02085620": "chihuahua", "n01440764": "tench"}')
    assert open_dataset(path, class_names=names)[1].concepts == ("tench",)
    monkeypatch.setattr(loaders, "_wordnet_name", lambda synset: None)  # no WordNet corpus
    with pytest.raises(ValueError, match="class_names"):
        ImageNetSegmentation(path)
    with pytest.raises(ValueError, match="no entry for synset 'n01440764'"):
        ImageNetSegmentation(path, class_names={"n02085620": "chihuahua"})


def test_a_mat_file_without_the_layout_is_refused(tmp_path):
    path = tmp_path / "other.mat"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=[1])
    with pytest.raises(ValueError, match="/value/img"):
        ImageNetSegmentation(path)


# ---------------------------------------------------------------------------------- VOC


def test_voc_single_class_keeps_images_with_one_foreground_class(tmp_path):
    root = write_voc(tmp_path / "voc")
    dataset = VOCSingleClass(root)
    assert [k.sample_id for k in dataset.sample_keys()] == ["2007_000001"]
    assert dataset.skipped == 2 and dataset.describe()["multi_class_images_skipped"] == 2
    sample = dataset[0]
    assert sample.concepts == ("dining table",) and sample.tags == {"class": "diningtable"}
    assert sample.masks.shape == (1, 24, 32) and sample.masks[0].sum() == 12 * 14 - 14
    assert (
        sample.ignore is not None
        and sample.ignore.sum() == 16
        and not (sample.ignore & sample.masks[0]).any()
    )
    assert VOCSingleClass(root / "VOCdevkit", class_names={"diningtable": "table"})[0].concepts == ("table",)


def test_voc_without_image_sets_says_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="ImageSets/Segmentation/val.txt"):
        VOCSingleClass(tmp_path)


def test_open_dataset_detects_the_benchmark(tmp_path, gtsegs, mcc_folder):
    voc = write_voc(tmp_path / "voc")
    assert detect_benchmark(voc) == "voc" and detect_benchmark(voc / "VOCdevkit" / "VOC2012") == "voc"
    assert detect_benchmark(gtsegs[0]) == "imagenet-seg"
    assert detect_benchmark(mcc_folder) == "mcc" and detect_benchmark("org/multi-concept-confusion") == "mcc"
    assert isinstance(open_dataset(voc), VOCSingleClass)
    assert isinstance(open_dataset(mcc_folder, config="two_concepts", cache_dir=tmp_path / "c"), MCCDataset)
    with pytest.raises(ValueError, match="unknown benchmark kind"):
        open_dataset(voc, kind="coco")  # type: ignore[arg-type]
