"""Semantics of report means: failed pairs never enter a mean, degenerate pairs never enter
the NAR mean, and both are counted (method.md "Metrics"; ``METRIC_DECISIONS``).

A *failed* pair (the method raised, returned too few maps, or a map with NaN) has no scores:
averaging it as zeros would charge a method's crash to its quality figures. A *degenerate*
pair (the normalised heatmap sums to 0 over R, e.g. a constant map with max == min) has NaN
NAR: excluded from the NAR mean, counted, and kept for the other metrics (their values are
defined). Checked on hand-made rows through ``Report.from_rows`` and end to end through
``evaluate`` (pairs.jsonl -> report.json), against means computed here over valid pairs only.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from benchmark.datasets import InvalidSample, Sample, SampleKey, SampleList
from benchmark.evaluate import evaluate, read_pairs
from benchmark.metrics import FG_METRICS, fg_scores
from benchmark.report import Report

METRICS = FG_METRICS  # miou_fg, iou_target, acc_fg, map_fg, nar


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else math.nan


def assert_means(actual: dict, expected: dict, where: str) -> None:
    for metric in METRICS:
        got, want = actual[metric], expected[metric]
        if math.isnan(want):
            assert math.isnan(got), f"{where} {metric}: {got} (expected NaN)"
        else:
            assert got == pytest.approx(want, abs=1e-12), f"{where} {metric}: {got} != {want}"


# -- hand-made rows ------------------------------------------------------------------------------
def ok_row(sample: str, target: int, k: int, source: str, scores: dict, degenerate: bool = False) -> dict:
    return {
        "sample_id": sample,
        "target": target,
        "status": "ok",
        "tags": {"num_concepts": str(k), "source": source},
        "scores": {**scores, "degenerate": degenerate},
    }


def failed_row(sample: str, target: int, k: int, source: str) -> dict:
    return {
        "sample_id": sample,
        "target": target,
        "status": "failed",
        "error": "RuntimeError: out of memory",
        "tags": {"num_concepts": str(k), "source": source},
    }


def scores(miou, iou, acc, ap, nar):
    return {"miou_fg": miou, "iou_target": iou, "acc_fg": acc, "map_fg": ap, "nar": nar}


ROWS = [
    ok_row("a", 0, 2, "generated", scores(0.8, 0.7, 0.9, 0.85, 0.2)),
    ok_row("a", 1, 2, "generated", scores(0.6, 0.5, 0.7, 0.65, 0.4)),
    ok_row("b", 0, 2, "web", scores(0.4, 0.3, 0.5, 0.45, None), degenerate=True),  # NAR null (JSON)
    failed_row("b", 1, 2, "web"),
    ok_row("c", 0, 3, "generated", scores(0.9, 0.8, 0.95, 0.9, 0.1)),
    ok_row("c", 1, 3, "generated", scores(0.3, 0.2, 0.4, 0.35, math.nan), degenerate=True),  # NAR NaN
    failed_row("c", 2, 3, "generated"),
    failed_row("d", 0, 3, "web"),
    failed_row("d", 1, 3, "web"),
    failed_row("d", 2, 3, "web"),
    {"sample_id": "e", "target": 0, "status": "invalid", "error": "the mask of 'x' is empty"},
]


def expected_from(rows: list[dict]) -> dict:
    """Means over valid (ok) pairs; NAR over ok pairs that are not degenerate."""
    ok = [r for r in rows if r["status"] == "ok"]
    out = {m: mean(r["scores"][m] for r in ok) for m in METRICS if m != "nar"}
    out["nar"] = mean(r["scores"]["nar"] for r in ok if not r["scores"]["degenerate"])
    return out


def counts_from(rows: list[dict]) -> dict:
    return {
        "pairs": len(rows),
        "scored": sum(r["status"] == "ok" for r in rows),
        "degenerate": sum(r["status"] == "ok" and r["scores"]["degenerate"] for r in rows),
        "failed": sum(r["status"] == "failed" for r in rows),
        "invalid": sum(r["status"] == "invalid" for r in rows),
    }


def subset_rows(rows: list[dict]) -> dict[str, list[dict]]:
    def tag(r, key):
        return (r.get("tags") or {}).get(key)

    return {
        "2 concepts": [r for r in rows if tag(r, "num_concepts") == "2"],
        "3 concepts": [r for r in rows if tag(r, "num_concepts") == "3"],
        "generated": [r for r in rows if tag(r, "source") == "generated"],
        "web": [r for r in rows if tag(r, "source") == "web"],
    }


def fg_report(rows: list[dict]) -> Report:
    return Report.from_rows(rows, protocol="fg", method="m", configuration={}, dataset={"name": "mcc"})


def test_hand_made_rows_means_cover_valid_pairs_only():
    """Pins: overall and per-subset means equal the means over ok pairs computed by hand
    (failed pairs not averaged as zeros; degenerate pairs out of the NAR mean only), and
    the counts report pairs / scored / degenerate / failed / invalid."""
    report = fg_report(ROWS)
    # spelled out once for the overall figure: a=(0.8, 0.6), b0=0.4, c=(0.9, 0.3)
    assert report.overall["miou_fg"] == pytest.approx((0.8 + 0.6 + 0.4 + 0.9 + 0.3) / 5)
    assert report.overall["nar"] == pytest.approx((0.2 + 0.4 + 0.1) / 3)
    assert_means(report.overall, expected_from(ROWS), "overall")
    assert report.counts["overall"] == {"pairs": 11, "scored": 5, "degenerate": 2, "failed": 5, "invalid": 1}
    subsets = subset_rows(ROWS)
    assert set(report.subsets) == set(subsets)
    for label, rows in subsets.items():
        assert_means(report.subsets[label], expected_from(rows), label)
        assert report.counts[label] == counts_from(rows), label
    # a subset whose pairs all failed or are degenerate has NaN means, not zeros
    web = report.subsets["web"]
    assert math.isnan(web["nar"]) and web["miou_fg"] == pytest.approx(0.4)
    assert report.counts["web"]["failed"] == 4


def test_a_run_where_every_pair_failed_has_nan_means_not_zeros():
    """Pins: with no valid pair, every mean is NaN (shown as "–"), never 0."""
    rows = [failed_row("d", t, 3, "web") for t in range(3)]
    report = fg_report(rows)
    assert all(math.isnan(report.overall[m]) for m in METRICS)
    assert report.counts["overall"] == {"pairs": 3, "scored": 0, "degenerate": 0, "failed": 3, "invalid": 0}
    assert "0.00" not in report.to_markdown().split("## By subset")[1].split("## Counts")[0]


# -- end to end through evaluate -----------------------------------------------------------------
SIZE = 24


def rect(top: int, left: int, height: int, width: int) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[top : top + height, left : left + width] = True
    return mask


# sample id -> (number of concepts, source, what the method does with it)
PLAN = {
    "good-2": (2, "generated", "good"),
    "raise-2": (2, "web", "raise"),  # the method raises: every pair failed
    "flat-2": (2, "web", "flat"),  # concept 0's map is constant: degenerate
    "good-3": (3, "generated", "good"),
    "short-3": (3, "generated", "short"),  # one map missing: every pair failed
    "nan-3": (3, "web", "nan"),  # concept 1's map holds NaN: that pair failed
    "flat-3": (3, "generated", "flat"),
    "empty-2": (2, "generated", "good"),  # concept 1's mask is empty: invalid
}
UNREADABLE = "broken-2"  # the dataset cannot decode it: invalid


def masks_for(sample_id: str, k: int) -> np.ndarray:
    masks = [rect(2, 2, 8, 10), rect(12, 4, 9, 8), rect(3, 15, 18, 7)][:k]
    if sample_id == "empty-2":
        masks[1] = np.zeros((SIZE, SIZE), dtype=bool)
    return np.stack(masks)


def heatmaps_for(sample_id: str, k: int) -> np.ndarray:
    """The method's maps: seeded noise at 8 x 8 (every value distinct, so never degenerate)."""
    seed = sum(map(ord, sample_id))
    maps = np.random.default_rng(seed).random((k, 8, 8))
    behaviour = PLAN[sample_id][2]
    if behaviour == "flat":
        maps[0] = 0.37  # max == min: normalises to all zeros, NAR undefined
    if behaviour == "nan":
        maps[1, 3, 3] = np.nan
    return maps


def method(image: Image.Image, concepts: list[str]) -> np.ndarray:
    sample_id = image.info["sample_id"]
    behaviour = PLAN[sample_id][2]
    if behaviour == "raise":
        raise RuntimeError("CUDA out of memory")
    maps = heatmaps_for(sample_id, len(concepts))
    return maps[:-1] if behaviour == "short" else maps


class Dataset(SampleList):
    """The PLAN samples, plus one row that cannot be decoded (``InvalidSample``)."""

    def sample_keys(self) -> list[SampleKey]:
        return [*super().sample_keys(), SampleKey(UNREADABLE, 2)]

    def __len__(self) -> int:
        return len(self.samples) + 1

    def __getitem__(self, index: int) -> Sample:
        if index == len(self.samples):
            raise InvalidSample("mask 1 is 10 x 10, the image 24 x 24")
        return self.samples[index]


def make_dataset() -> Dataset:
    samples = []
    for sample_id, (k, source, _) in PLAN.items():
        image = Image.new("RGB", (SIZE, SIZE), (90, 90, 90))
        image.info["sample_id"] = sample_id
        tags = {"num_concepts": str(k), "source": source}
        samples.append(
            Sample(sample_id, image, ("husky", "wolf", "malamute")[:k], masks_for(sample_id, k), tags)
        )
    return Dataset(samples, name="mcc-semantics")


def expected_pairs() -> list[dict]:
    """Every pair's expected row, decided by construction (not read back from the run)."""
    rows = []
    for sample_id, (k, source, behaviour) in PLAN.items():
        masks = masks_for(sample_id, k)
        for target in range(k):
            tags = {"num_concepts": str(k), "source": source}
            if not masks[target].any():
                rows.append({"sample_id": sample_id, "target": target, "status": "invalid", "tags": tags})
            elif behaviour in ("raise", "short") or (behaviour == "nan" and target == 1):
                rows.append({**failed_row(sample_id, target, k, source)})
            else:
                degenerate = behaviour == "flat" and target == 0
                s = fg_scores(heatmaps_for(sample_id, k)[target], masks, target).as_dict()
                s.pop("degenerate")
                if degenerate:
                    s["nar"] = math.nan
                rows.append(ok_row(sample_id, target, k, source, s, degenerate=degenerate))
    rows += [{"sample_id": UNREADABLE, "target": t, "status": "invalid"} for t in range(2)]
    return rows


def test_evaluate_report_means_exclude_failed_and_degenerate_pairs(tmp_path):
    """Pins, end to end: pairs of a raising method, a missing map or a NaN map are ``failed``;
    a constant map is ``degenerate`` (NAR null); report.json's overall and per-subset means
    equal the means over valid pairs computed here, and every count is reported."""
    report = evaluate(method, make_dataset(), out_dir=tmp_path, progress=False, qualitative=0, figures=False)
    expected = expected_pairs()
    by_pair = {(r["sample_id"], int(r["target"])): r for r in read_pairs(tmp_path)}
    assert set(by_pair) == {(r["sample_id"], r["target"]) for r in expected}
    for row in expected:
        got = by_pair[(row["sample_id"], row["target"])]
        assert got["status"] == row["status"], (row["sample_id"], row["target"], got.get("error"))
        if row["status"] == "ok":
            assert got["scores"]["degenerate"] is row["scores"]["degenerate"]
            if row["scores"]["degenerate"]:
                assert got["scores"]["nar"] is None  # NaN, stored as null
    # the flat maps really are degenerate, and their other metrics are defined
    flat = [r for r in expected if r["status"] == "ok" and r["scores"]["degenerate"]]
    assert len(flat) == 2 and all(0 <= r["scores"]["miou_fg"] <= 1 for r in flat)

    written = Report.read(tmp_path / "report.json")
    for result in (report, written):
        assert_means(result.overall, expected_from(expected), "overall")
        assert result.counts["overall"] == counts_from(expected)
        assert result.counts["overall"] == {
            "pairs": 22,
            "scored": 13,
            "degenerate": 2,
            "failed": 6,
            "invalid": 3,
        }
        for label, rows in subset_rows(expected).items():
            assert_means(result.subsets[label], expected_from(rows), label)
            assert result.counts[label] == counts_from(rows), label
    markdown = (tmp_path / "report.md").read_text()
    assert "**6 failed and 3 invalid pairs** of 22" in markdown
    assert "| overall | 22 | 13 | 2 | 6 | 3 |" in markdown
