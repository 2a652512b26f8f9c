"""Anchor diagnostics of a run (issue 16 item 3): every anchor of each concept, the Table 1 affinity
statistics per image, their summaries in the report and the anchor figure."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmark.evaluate import AnchorDiffMethod, anchor_shares, evaluate, padded_anchors
from benchmark.report import Report, affinity_summary, anchor_summary


def test_anchor_shares_count_target_and_other_concepts_at_token_centres():
    """On a 2 x 4 grid over 4 x 8 pixel masks: anchor (0, 0) tests pixel (1, 1), (1, 3) tests (3, 7)."""
    masks = np.zeros((3, 4, 8), bool)
    masks[0, :2, :2] = True  # token (0, 0)
    masks[1, 2:, 6:] = True  # token (1, 3)
    masks[2, 2:, 6:] = True  # overlaps concept 1
    anchors = np.array([[0, 0], [1, 3], [0, 2]])
    shares = anchor_shares(anchors, (2, 4), masks, target=0)
    assert shares == {"anchors": [[0, 0], [1, 3], [0, 2]], "anchor_precision": pytest.approx(1 / 3),
                      "anchors_on_other_concepts": pytest.approx(1 / 3)}  # fmt: skip
    # on the target's own mask an anchor never counts as "other", even where another mask overlaps
    assert anchor_shares(anchors[1:2], (2, 4), masks, target=1)["anchors_on_other_concepts"] == 0.0
    assert anchor_shares(anchors[:1], (2, 4), masks[:1], target=0)["anchors_on_other_concepts"] == 0.0
    assert padded_anchors([anchors, anchors[:1]]).tolist() == [
        [[0, 0], [1, 3], [0, 2]], [[0, 0], [-1, -1], [-1, -1]],
    ]  # fmt: skip


def test_summaries_count_each_image_once_and_skip_empty_pair_kinds():
    def affinity(same, conf):
        return {
            m: {"same_object": same, "confusable": conf, "fg_bg": 0.5}
            for m in ("w_attn", "w_cos", "w_cos_gated")
        }

    rows = [
        {"sample_id": "a", "affinity": affinity(0.2, None), "anchors": [[0, 0]], "anchor_precision": 1.0,
         "anchors_on_other_concepts": 0.0},
        {"sample_id": "a", "affinity": affinity(0.2, None), "anchors": [[0, 0], [1, 1]], "anchor_precision": 0.5,
         "anchors_on_other_concepts": 0.5},
        {"sample_id": "b", "affinity": affinity(0.8, 0.4)},
    ]  # fmt: skip
    summary = affinity_summary(rows)
    assert summary["images"] == 2
    assert summary["w_cos"] == {
        "same_object": pytest.approx(0.5),
        "confusable": pytest.approx(0.4),
        "fg_bg": 0.5,
    }
    assert anchor_summary(rows) == {
        "per_concept": 1.5,
        "precision": 0.75,
        "on_other_concepts": 0.25,
        "pairs": 2,
    }
    assert (
        affinity_summary([{"sample_id": "c", "affinity": {"error": "x"}}]) == {} and anchor_summary([]) == {}
    )


@pytest.mark.slow
def test_a_graph_run_writes_every_anchor_and_the_images_affinity_statistics(mcc_dataset, tmp_path):
    """anchordiff_multi on the tiny model: each pair lists the anchors AnchorDiff returns for its image,
    with shares computed here at token centres; each row's affinity equals affinity_stats of that image's
    recording (mean A_II / O_II of the graph layers) and its masks; the report averages them per image,
    prints Table 1's layout beside the published rows, and draws figures/anchors.png."""
    from anchordiff import AnchorDiff
    from anchordiff.graph import affinity_stats, token_labels

    ad = AnchorDiff.from_pretrained("tiny", num_inference_steps=4)
    method = AnchorDiffMethod("tiny", method="anchordiff_multi", mode="noise", pipeline=ad)
    out = tmp_path / "run"
    report = evaluate(method, mcc_dataset, out_dir=out, limit=2, progress=False)
    rows = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    ok = [r for r in rows if r["status"] == "ok"]
    keys = {key.sample_id: index for index, key in enumerate(mcc_dataset.sample_keys())}
    for sample_id in {r["sample_id"] for r in ok}:
        sample = mcc_dataset[keys[sample_id]]
        direct = ad(sample.image, list(sample.concepts), mode="noise", method="anchordiff_multi",
                    return_record=True)  # fmt: skip
        a_ii = torch.stack([direct.record.a_ii[x] for x in ad.graph_layers]).mean(dim=0)
        o_ii = torch.stack([direct.record.o_ii[x] for x in ad.graph_layers]).mean(dim=0)
        labels = token_labels(torch.as_tensor(sample.masks), direct.record.grid)
        stats = affinity_stats(a_ii, o_ii, labels)
        for row in (r for r in ok if r["sample_id"] == sample_id):
            target = row["target"]
            assert row["anchors"] == direct.anchor_sets[target].tolist()
            assert row["anchors"][0] == direct.anchors[target].tolist()
            gh, gw = direct.record.grid
            height, width = sample.masks.shape[1:]
            inside = [sample.masks[target][int((r + 0.5) * height / gh), int((c + 0.5) * width / gw)]
                      for r, c in row["anchors"]]  # fmt: skip
            assert row["anchor_precision"] == pytest.approx(np.mean(inside))
            for matrix in ("w_attn", "w_cos", "w_cos_gated"):
                for pairs, value in stats[matrix].items():
                    if np.isnan(value):
                        assert row["affinity"][matrix][pairs] is None
                    else:
                        assert row["affinity"][matrix][pairs] == pytest.approx(value, rel=1e-6)
    assert report.affinity["images"] == 2 and report.anchors["pairs"] == len(ok)
    first = {r["sample_id"]: r["affinity"]["w_cos"]["same_object"] for r in ok}
    assert report.affinity["w_cos"]["same_object"] == pytest.approx(np.mean(list(first.values())))
    markdown = (out / "report.md").read_text()
    assert (
        "## Affinity statistics (layout of the paper's Table 1; percent, mean over 2 images, this run's graph "
        "layers)" in markdown.splitlines()
    )
    assert "| W_cos | 79.40 | 67.27 | 41.80 | published (paper Table 1) |" in markdown
    ours = report.affinity["w_cos"]
    cells = ["–" if ours.get(p) is None or np.isnan(ours[p]) else f"{100 * ours[p]:.2f}"
             for p in ("same_object", "confusable", "fg_bg")]  # fmt: skip
    assert f"| W_cos | {cells[0]} | {cells[1]} | {cells[2]} | this run |" in markdown.splitlines()
    assert cells[0] != "–"
    assert "per concept;" in markdown
    assert (out / "figures" / "anchors.png").stat().st_size > 5_000
    with np.load(next((out / "heatmaps").glob("*.npz"))) as saved:
        assert saved["anchors"].ndim == 3 and saved["anchors"].shape[2] == 2
    again = Report.read(out / "report.json")
    assert again.affinity == json.loads(json.dumps(report.affinity)) and again.anchors == report.anchors

    baseline = evaluate(AnchorDiffMethod("tiny", method="seg4diff", mode="noise", pipeline=ad), mcc_dataset,
                        out_dir=tmp_path / "seg", limit=1, progress=False)  # fmt: skip
    assert (
        baseline.affinity == {}
        and baseline.anchors == {}
        and not (tmp_path / "seg/figures/anchors.png").exists()
    )
