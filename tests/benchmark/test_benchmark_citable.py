"""What makes a run citable (issue 15): chance rows on the same pairs, warnings for smoke or
unreviewed data, bootstrap intervals over images, per-group leakage, a stratified ``--limit``,
and Chefer et al.'s 224 x 224 protocol reproduced exactly."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score

from benchmark.datasets import Sample, SampleKey, SampleList
from benchmark.evaluate import (
    at_protocol_resolution,
    chance_heatmap,
    evaluate,
    limited_selection,
    read_pairs,
)
from benchmark.metrics import fg_scores, leakage_shares, normalize_heatmap
from benchmark.report import Report, bootstrap_interval, build_warnings, compat_rows, fg_intervals


def rectangles(size=(40, 60), k=2, offset=0) -> np.ndarray:
    """(k, H, W) disjoint horizontal bands of different heights."""
    masks = np.zeros((k, *size), dtype=bool)
    for c in range(k):
        masks[c, 3 + 12 * c : 10 + 12 * c + 2 * c + offset, 5:50] = True
    return masks


def mcc_samples(n=6) -> list[Sample]:
    samples = []
    for i in range(n):
        k = 2 if i % 3 else 3
        masks = rectangles(k=k, offset=i % 2)
        image = Image.fromarray(np.full((*masks.shape[1:], 3), 100, dtype=np.uint8))
        concepts = ("husky", "wolf", "malamute")[:k]
        tags = {"num_concepts": str(k), "source": "web" if i % 2 else "generated", "group": f"g{k}",
                "domain": "animals" if k == 3 else "fruit"}  # fmt: skip
        samples.append(Sample(f"s{i}", image, concepts, masks, tags))
    return samples


def band_method(image, concepts):
    """Lights concept k's band and, weaker, the next concept's band (a known leak)."""
    h, w = image.height, image.width
    maps = np.zeros((len(concepts), h, w))
    bands = rectangles((h, w), k=len(concepts))
    for k in range(len(concepts)):
        maps[k][bands[k]] = 1.0
        maps[k][bands[(k + 1) % len(concepts)]] = 0.25
    return maps


# -- chance rows ------------------------------------------------------------------------------


def constant_map_scores(masks: np.ndarray, target: int) -> dict[str, float]:
    """A constant map predicts nothing (h = 0 everywhere, not > its mean): from pixel counts."""
    n_t = int(masks[target].sum())
    other = np.zeros_like(masks[0])
    for k, m in enumerate(masks):
        if k != target:
            other |= m
    n_o = int((other & ~masks[target]).sum())
    return {
        "acc_fg": n_o / (n_t + n_o),
        "iou_target": 0.0,
        "miou_fg": (0.0 + n_o / (n_o + n_t)) / 2,
        "map_fg": n_t / (n_t + n_o),  # every score ties: AP = the positive rate
    }


def test_chance_rows_are_scored_on_the_same_pairs(tmp_path):
    samples = mcc_samples()
    report = evaluate(
        band_method, SampleList(samples, name="mcc"), out_dir=tmp_path, progress=False, figures=False
    )
    rows = read_pairs(tmp_path)
    assert len(rows) == sum(len(s.concepts) for s in samples)
    for row in rows:
        sample = samples[int(row["sample_id"][1:])]
        constant = row["chance"]["constant"]
        for metric, value in constant_map_scores(sample.masks, row["target"]).items():
            assert constant[metric] == pytest.approx(value, abs=1e-12), metric
        assert constant["degenerate"] is True and constant["nar"] is None
        noise = chance_heatmap("random", sample.masks.shape[1:], sample.sample_id, row["target"])
        assert row["chance"]["random"] == pytest.approx(
            {k: v for k, v in fg_scores(noise, sample.masks, row["target"]).as_dict().items()}
        )
    # the report's chance rows are the means of those rows, over the same pairs as the method
    for kind in ("constant", "random"):
        for metric in ("acc_fg", "map_fg", "miou_fg"):
            expected = np.mean([r["chance"][kind][metric] for r in rows])
            assert report.chance[kind][metric] == pytest.approx(expected)
        assert report.chance[kind]["pairs"] == report.counts["overall"]["scored"]
    assert math.isnan(report.chance["constant"]["nar"])
    # a uniform random map: NAR close to the distractors' share of R, AP close to the target's
    random_nar = np.mean([r["chance"]["random"]["nar"] for r in rows])
    area_share = np.mean(
        [1 - constant_map_scores(samples[int(r["sample_id"][1:])].masks, r["target"])["map_fg"] for r in rows]
    )
    assert random_nar == pytest.approx(area_share, abs=0.02)
    markdown = report.to_markdown().splitlines()
    ours = next(
        i
        for i, line in enumerate(markdown)
        if line.endswith(f" | this run, {report.counts['overall']['scored']} pairs |")
    )
    assert markdown[ours - 2].startswith("| chance: constant map | ")
    assert markdown[ours - 1].startswith("| chance: uniform random map | ")
    assert markdown[ours - 2].endswith(f"| chance, this run's {report.counts['overall']['scored']} pairs |")


def test_random_chance_map_is_fixed_per_pair_and_differs_between_pairs():
    a = chance_heatmap("random", (8, 9), "s1", 0)
    assert a.shape == (8, 9) and np.array_equal(a, chance_heatmap("random", (8, 9), "s1", 0))
    assert not np.array_equal(a, chance_heatmap("random", (8, 9), "s1", 1))
    assert not np.array_equal(a, chance_heatmap("random", (8, 9), "s2", 0))
    assert a.min() >= 0.0 and a.max() < 1.0
    with pytest.raises(ValueError, match="constant, random"):
        chance_heatmap("gaussian", (2, 2), "s", 0)


def test_binary_chance_rows(tmp_path):
    masks = rectangles(k=1)
    samples = [Sample(f"i{i}", Image.new("RGB", (60, 40)), ("dog",), masks) for i in range(3)]
    report = evaluate(
        lambda image, concepts: band_method(image, concepts) + 0.1,
        SampleList(samples, name="imagenet-seg", protocol="binary"),
        out_dir=tmp_path, progress=False, figures=False,
    )  # fmt: skip
    fg = int(masks.sum())
    # constant map: everything background
    assert report.chance["constant"]["acc"] == pytest.approx(1 - fg / masks[0].size)
    assert report.chance["constant"]["iou_foreground"] == 0.0
    assert report.chance["constant"]["pairs"] == 3
    assert 0.3 < report.chance["random"]["acc"] < 0.7


# -- warnings, version, bold ------------------------------------------------------------------


def _report(dataset, configuration):
    rows = [
        {"sample_id": "a", "target": 0, "concept": "x", "concepts": ["x", "y"], "status": "ok",
         "scores": {"miou_fg": 0.5, "iou_target": 0.5, "acc_fg": 0.5, "map_fg": 0.5, "nar": 0.2, "degenerate": False}},
    ]  # fmt: skip
    return Report.from_rows(rows, protocol="fg", method="m", configuration=configuration, dataset=dataset)


def test_machine_masks_and_tiny_models_raise_a_banner_and_unbold_the_run():
    reviewed = {"name": "mcc", "dataset_version": "1.2.0", "fingerprint": "abc", "code_version": "0.3.0+g1",
                "review": {"accepted": 9, "edited": 1}, "generators": ["black-forest-labs/FLUX.1-dev@main"]}  # fmt: skip
    real = _report(reviewed, {"model": "stabilityai/sd3"})
    assert real.warnings == [] and not real.smoke
    markdown = real.to_markdown()
    assert "Warning" not in markdown
    assert (
        "| **m (stabilityai/sd3)** | **50.00** | **50.00** | **20.00** | **50.00** | this run, 1 pairs |"
        in markdown
    )
    assert (
        "Dataset: mcc, version 1.2.0, fingerprint `abc`, built by code 0.3.0+g1, "
        "masks: 10 of 10 reviewed by a person (accepted 9, edited 1)." in markdown.splitlines()
    )

    machine = {**reviewed, "review": {"accepted": 1, "machine": 3}}
    assert build_warnings(machine, {}) == [
        "3 of 4 masks (75.0%) are machine masks (SAM2 output no person has reviewed): this dataset is not "
        "the reviewed benchmark"
    ]
    tiny_data = {**reviewed, "generators": ["tiny"]}
    assert build_warnings(tiny_data, {}) == [
        "the images come from the random `tiny` generator (a smoke build): the figures test the code and "
        "measure nothing"
    ]
    assert "scored model `tiny` has random weights" in build_warnings(reviewed, {"model": "tiny"})[0]
    assert "`random-sd3` has random weights" in build_warnings(reviewed, {"model": "random-sd3"})[0]
    assert build_warnings({**reviewed, "generators": ["tinyllama/x@main"]}, {"model": "org/tinyish"}) == []
    for dataset, config in ((machine, {}), (tiny_data, {}), (reviewed, {"model": "tiny"})):
        smoke = _report(dataset, config)
        lines = smoke.to_markdown().splitlines()
        assert lines[2] == "> **Warning: these figures are not benchmark results.**"
        ours = next(line for line in lines if "| this run" in line)
        assert "**" not in ours and "this run (smoke: see the warning)" in ours
        assert smoke.to_dict()["warnings"] == smoke.warnings


# -- bootstrap --------------------------------------------------------------------------------


def test_bootstrap_draws_images_not_pairs():
    """100 images, 3 identical pairs each, Bernoulli(0.5) values: the 95% interval of the mean
    is about +-1.96 sqrt(0.25 / 100) = +-0.098 (a pair-level bootstrap would give +-0.057)."""
    rng = np.random.default_rng(3)
    values = rng.integers(0, 2, 100).astype(float)
    rows = [
        {
            "sample_id": f"i{i}",
            "scores": {"miou_fg": v, "iou_target": v, "acc_fg": v, "map_fg": v, "nar": None},
        }
        for i, v in enumerate(values)
        for _ in range(3)
    ]
    intervals = fg_intervals(rows)
    low, high = intervals["acc_fg"]
    assert low < values.mean() < high
    assert (high - low) / 2 == pytest.approx(
        1.96 * math.sqrt(values.mean() * (1 - values.mean()) / 100), rel=0.15
    )
    assert math.isnan(intervals["nar"][0]) and math.isnan(intervals["nar"][1])


def test_bootstrap_interval_statistic_sees_resampled_totals():
    per_image = np.array([[1.0, 1.0], [3.0, 1.0]])
    low, high = bootstrap_interval(per_image, lambda t: t[:, :1] / t[:, 1:], resamples=2000)
    assert low[0] == pytest.approx(1.0) and high[0] == pytest.approx(3.0)  # both images twice
    same = bootstrap_interval(np.array([[2.0, 1.0]] * 5), lambda t: t[:, :1] / t[:, 1:])
    assert same[0][0] == same[1][0] == 2.0


# -- leakage ----------------------------------------------------------------------------------


def test_leakage_shares_against_a_direct_sum():
    masks = rectangles(k=3)
    rng = np.random.default_rng(0)
    heatmap = rng.random((7, 9))
    h = normalize_heatmap(heatmap, masks.shape[1:])
    for target in range(3):
        shares = leakage_shares(heatmap, masks, target)
        region = masks.any(0)
        expected = [
            h[m & (~masks[target] if k != target else m)].sum() / h[region].sum() for k, m in enumerate(masks)
        ]
        assert shares == pytest.approx(expected)
        assert sum(shares) == pytest.approx(1.0)
        nar = fg_scores(heatmap, masks, target).nar
        assert sum(s for k, s in enumerate(shares) if k != target) == pytest.approx(nar)
    assert all(math.isnan(v) for v in leakage_shares(np.ones((3, 3)), masks, 0))


def test_leakage_matrix_per_group_in_report(tmp_path):
    report = evaluate(
        band_method, SampleList(mcc_samples(), name="mcc"), out_dir=tmp_path, progress=False, figures=False
    )
    rows = [r for r in read_pairs(tmp_path) if r["status"] == "ok"]
    assert set(report.leakage) == {"g2", "g3"}
    g3 = report.leakage["g3"]
    # the method leaks onto the next concept only: husky -> wolf, wolf -> malamute, malamute -> husky
    matrix = g3["matrix"]
    assert matrix["husky"]["wolf"] > 0.05 and matrix["husky"]["malamute"] == pytest.approx(0.0)
    assert matrix["wolf"]["malamute"] > 0.05 and matrix["wolf"]["husky"] == pytest.approx(0.0)
    expected = np.mean(
        [r["leakage"][1] for r in rows if r["tags"]["group"] == "g3" and r["concept"] == "husky"]
    )
    assert matrix["husky"]["wolf"] == pytest.approx(expected)
    assert g3["nar"] == pytest.approx(
        np.mean([r["scores"]["nar"] for r in rows if r["tags"]["group"] == "g3"])
    )
    markdown = report.to_markdown()
    assert "## Groups that leak most" in markdown
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["leakage"]["g2"]["pairs"] == report.leakage["g2"]["pairs"] > 0
    assert (report.leakage["g2"]["domain"], report.leakage["g3"]["domain"]) == ("fruit", "animals")


def test_leakage_figure_per_domain(tmp_path):
    from benchmark.figures import leakage_figures

    report = evaluate(
        band_method, SampleList(mcc_samples(), name="mcc"), out_dir=tmp_path, progress=False, figures=True
    )
    assert sorted(p.name for p in (tmp_path / "figures").glob("leakage_*.png")) == [
        "leakage_animals.png", "leakage_fruit.png",
    ]  # fmt: skip
    written = leakage_figures({"g": {**report.leakage["g3"], "domain": "a b/c"}}, tmp_path / "other")
    assert [p.name for p in written] == ["leakage_a_b_c.png"] and Image.open(written[0]).width > 100


# -- stratified limit -------------------------------------------------------------------------


def test_limit_is_stratified_by_subset_with_a_fixed_seed():
    keys = [SampleKey(f"a{i}", 2, {"num_concepts": "2", "source": "generated"}) for i in range(60)]
    keys += [SampleKey(f"b{i}", 3, {"num_concepts": "3", "source": "generated"}) for i in range(30)]
    keys += [SampleKey(f"c{i}", 2, {"num_concepts": "2", "source": "web"}) for i in range(10)]
    chosen = limited_selection(keys, 10)
    assert len(chosen) == 10
    kinds = [key.sample_id[0] for _, key in chosen]
    assert (kinds.count("a"), kinds.count("b"), kinds.count("c")) == (6, 3, 1)
    assert [i for i, _ in chosen] == sorted(i for i, _ in chosen)
    assert chosen == limited_selection(keys, 10)
    assert chosen != limited_selection(keys, 10, seed=1)
    assert [k.sample_id for _, k in chosen][:6] != [f"a{i}" for i in range(6)]  # not the first rows
    assert limited_selection(keys, None) == list(enumerate(keys)) == limited_selection(keys, 500)
    remainder = limited_selection(keys, 4)  # exact shares 2.4 / 1.2 / 0.4: the largest remainders win
    kinds = [key.sample_id[0] for _, key in remainder]
    assert (kinds.count("a"), kinds.count("b"), kinds.count("c")) == (2, 1, 1)


# -- the standard protocol at Chefer et al.'s resolution ---------------------------------------


def chefer_batch_pix_accuracy(predict, target):
    _, predict = torch.max(predict, 0)
    predict = predict.cpu().numpy() + 1
    target = target.cpu().numpy() + 1
    pixel_labeled = np.sum(target > 0)
    pixel_correct = np.sum((predict == target) * (target > 0))
    return pixel_correct, pixel_labeled


def chefer_batch_intersection_union(predict, target, nclass):
    _, predict = torch.max(predict, 0)
    predict = predict.cpu().numpy() + 1
    target = target.cpu().numpy() + 1
    predict = predict * (target > 0).astype(predict.dtype)
    intersection = predict * (predict == target)
    area_inter, _ = np.histogram(intersection, bins=nclass, range=(1, nclass))
    area_pred, _ = np.histogram(predict, bins=nclass, range=(1, nclass))
    area_lab, _ = np.histogram(target, bins=nclass, range=(1, nclass))
    return area_inter, area_pred + area_lab - area_inter


def chefer_get_ap_scores(predict, target):
    total = []
    for pred, tgt in zip(predict, target, strict=True):
        target_1hot = torch.zeros_like(pred).scatter_(0, tgt.unsqueeze(0).clamp(min=0).long(), 1)
        total.append(
            np.nan_to_num(average_precision_score(target_1hot.numpy().reshape(-1), pred.numpy().reshape(-1)))
        )
    return total


def chefer_evaluate(heatmaps, labels):
    """Chefer et al.'s imagenet_seg_eval.py, per image: bilinear upsampling, min-max (NaN -> 0),
    threshold at the mean, 2-channel argmax; pixAcc / mIoU from accumulated counts, mAP mean."""
    total_correct = total_label = 0
    total_inter = total_union = 0
    total_ap = []
    for heatmap, label in zip(heatmaps, labels, strict=True):
        res = torch.nn.functional.interpolate(
            torch.from_numpy(heatmap)[None, None].double(),
            size=(224, 224),
            mode="bilinear",
            align_corners=False,
        )
        res = (res - res.min()) / (res.max() - res.min())
        ret = res.mean()
        res_1 = res.gt(ret).type(res.type())
        res_0 = res.le(ret).type(res.type())
        res_1_ap, res_0_ap = res, 1 - res
        for tensor in (res_1, res_0, res_1_ap, res_0_ap):
            tensor[tensor != tensor] = 0
        output = torch.cat((res_0, res_1), 1)
        output_ap = torch.cat((res_0_ap, res_1_ap), 1)
        labels_t = torch.from_numpy(label.astype(np.int64))[None]
        correct, labeled = chefer_batch_pix_accuracy(output[0], labels_t[0])
        inter, union = chefer_batch_intersection_union(output[0], labels_t[0], 2)
        total_correct += correct
        total_label += labeled
        total_inter = total_inter + inter
        total_union = total_union + union
        total_ap += chefer_get_ap_scores(output_ap, labels_t)
    pix_acc = total_correct / (np.spacing(1) + total_label)
    iou = total_inter / (np.spacing(1) + total_union)
    return pix_acc, iou.mean(), np.mean(total_ap)


def test_protocol_resolution_224_with_compat_equals_chefers_evaluation(tmp_path):
    rng = np.random.default_rng(7)
    samples, heatmaps = [], {}
    for i in range(6):
        height, width = int(rng.integers(150, 330)), int(rng.integers(150, 330))
        mask = np.zeros((height, width), dtype=bool)
        top, left = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
        mask[top : top + height // 3, left : left + width // 2] = True
        samples.append(Sample(f"im{i}", Image.new("RGB", (width, height)), ("dog",), mask[None]))
        heatmaps[f"im{i}"] = np.full((14, 14), 0.3) if i == 2 else rng.random((14, 14))  # im2: constant

    def method(image, concepts):
        return heatmaps[next(s.sample_id for s in samples if s.image is image)][None]

    dataset = SampleList(samples, name="imagenet-seg", protocol="binary")
    report = evaluate(
        method, dataset, out_dir=tmp_path, progress=False, figures=False,
        protocol_resolution=224, conceptattention_compat=True,
    )  # fmt: skip
    labels = [
        (np.asarray(Image.fromarray(s.masks[0].astype(np.uint8) * 255).resize((224, 224), Image.NEAREST)) > 0)
        for s in samples
    ]
    acc, miou, mean_ap = chefer_evaluate([heatmaps[s.sample_id] for s in samples], labels)
    assert report.overall["acc"] == pytest.approx(acc, abs=1e-12)
    assert report.overall["miou_proper"] == pytest.approx(miou, abs=1e-12)  # Chefer's mIoU is a mean IoU
    assert report.overall["miou"] == pytest.approx(acc / (2 - acc), abs=1e-12)  # ConceptAttention's figure
    assert report.overall["map"] == pytest.approx(mean_ap, abs=1e-12)
    # without the option the constant image's AP is the project's own (not Chefer's NaN -> 0)
    plain = Report.from_rows(
        read_pairs(tmp_path), protocol="binary", method="m", configuration={}, dataset={}
    )
    assert plain.overall["map"] != pytest.approx(mean_ap, abs=1e-6)
    # no groups to leak between: empty, not null
    assert plain.leakage == {} and plain.to_dict()["leakage"] == {}
    assert json.loads((tmp_path / "report.json").read_text())["metric_settings"]["protocol_resolution"] == 224


def test_protocol_resolution_resizes_masks_by_nearest_neighbour():
    mask = np.zeros((3, 4), dtype=bool)
    mask[0, 3] = True
    sample = Sample("s", Image.new("RGB", (4, 3)), ("x",), mask[None], ignore=mask.copy())
    resized = at_protocol_resolution(sample, 6)
    assert resized.masks.shape == (1, 6, 6) and resized.ignore.shape == (6, 6)
    expected = np.zeros((6, 6), dtype=bool)
    expected[0:2, 5] = True  # rows 0-1 come from row 0, column 5 from column 3 (PIL nearest)
    assert np.array_equal(resized.masks[0], expected) and np.array_equal(resized.ignore, expected)
    assert at_protocol_resolution(sample, None) is sample


def test_compat_option_only_where_conceptattention_uses_it(tmp_path):
    samples = [Sample("v", Image.new("RGB", (60, 40)), ("dog",), rectangles(k=1))]
    for name, protocol in (("voc2012-single-class", "binary"), ("mcc", "fg")):
        with pytest.raises(ValueError, match="ImageNet-Segmentation only"):
            evaluate(band_method, SampleList(samples, name=name, protocol=protocol), out_dir=tmp_path / name,
                     progress=False, conceptattention_compat=True)  # fmt: skip


def test_published_rows_are_sorted_by_their_miou_definition():
    compat, proper = compat_rows()
    assert len(compat) == 20 and len(proper) == 3
    assert proper == ["DINOv2 Reg SA", "Ours SD3", "Ours SD3.5"]


def test_leakage_with_overlapping_masks_counts_distractor_pixels_outside_the_target():
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, :2] = True  # target: rows 0-1
    masks[1, 1:3] = True  # distractor overlaps the target on row 1
    heatmap = np.zeros((4, 4))
    heatmap[1] = 1.0  # all the mass on the shared row
    heatmap[2, 0] = 1.0  # and one distractor-only pixel
    assert leakage_shares(heatmap, masks, 0) == pytest.approx([4 / 5, 1 / 5])


def test_binary_intervals_follow_the_compat_transform():
    from benchmark.report import binary_intervals

    rng = np.random.default_rng(1)
    rows = []
    for i in range(40):
        labeled = 100
        correct = int(rng.integers(40, 100))
        rows.append({"sample_id": f"i{i}", "binary": {"correct": correct, "labeled": labeled, "inter": [10, 20],
                     "union": [30, 40], "ap": float(rng.random())}})  # fmt: skip
    compat = binary_intervals(rows, conceptattention_compat=True)
    low, high = compat["acc"]
    assert compat["miou"] == pytest.approx([low / (2 - low), high / (2 - high)])
    proper = binary_intervals(rows, conceptattention_compat=False)
    assert proper["miou"] == pytest.approx([(10 / 30 + 20 / 40) / 2] * 2)  # same counts in every image
    assert proper["acc"] == compat["acc"]


def test_chance_rows_sit_in_the_benchmark_s_columns_of_table3(tmp_path):
    masks = rectangles(k=1)
    samples = [Sample(f"i{i}", Image.new("RGB", (60, 40)), ("dog",), masks) for i in range(2)]
    for name, imagenet in (("imagenet-seg", True), ("voc2012-single-class", False)):
        report = evaluate(band_method, SampleList(samples, name=name, protocol="binary"), out_dir=tmp_path / name,
                          progress=False, figures=False)  # fmt: skip
        row = next(
            line for line in report.to_markdown().splitlines() if line.startswith("| chance: constant map")
        )
        cells = [c.strip() for c in row.strip("|").split("|")][1:7]
        blank, filled = (cells[3:], cells[:3]) if imagenet else (cells[:3], cells[3:])
        assert blank == ["–"] * 3 and "–" not in filled, (name, cells)
        assert filled[0] == f"{100 * report.chance['constant']['acc']:.2f}"


def test_leaky_groups_are_ranked_by_nar_and_name_their_worst_distractor():
    report = _report({"name": "mcc"}, {})
    report.leakage = {
        "calm": {"domain": "d", "pairs": 2, "nar": 0.1, "matrix": {"a": {"a": 0.9, "b": 0.1}}},
        "leaky": {"domain": "d", "pairs": 4, "nar": 0.6,
                  "matrix": {"x": {"x": 0.95, "y": 0.05}, "y": {"x": 0.7, "y": 0.3}}},
    }  # fmt: skip
    lines = report.to_markdown().splitlines()
    start = lines.index("## Groups that leak most (this run; top 2 of 2 by NAR)")
    assert lines[start + 4 : start + 6] == [
        "| leaky | 4 | 60.00 | y → x: 70.00% |",  # not the diagonal x → x (95%)
        "| calm | 2 | 10.00 | a → b: 10.00% |",
    ]
