"""Layer / pair / steps sweeps from one recording per image."""

from __future__ import annotations

import json

import pytest
from benchmark_fixtures import FakeAnchorDiff

from benchmark.sweep import SweepSetting, default_pair_layers, plan_settings, run_sweep


def test_plan_settings_lists_layers_pairs_then_steps():
    settings = plan_settings([0, 1, 2], pairs=[(2, 0), (0, 2), (1, 2)], steps=[160, 10, 10])
    assert [s.key for s in settings] == [
        "layers=0", "layers=1", "layers=2", "layers=0+2", "layers=1+2", "steps=10", "steps=160",
    ]  # fmt: skip
    assert settings[3] == SweepSetting("pair", (0, 2), 160) and settings[-1].layers is None
    with pytest.raises(ValueError, match="two different layers"):
        plan_settings([0], pairs=[(1, 1)])
    with pytest.raises(ValueError, match=">= 1"):
        plan_settings([0], steps=[0])


def test_default_pairs_are_the_papers_top8_on_real_backbones():
    assert default_pair_layers("sd3", list(range(24))) == (5, 9, 10, 11, 13, 14, 15, 18)
    assert default_pair_layers("sd35", list(range(38)))[-1] == 37
    assert default_pair_layers("sd3", [0, 1, 2, 3]) == (0, 1, 2, 3)  # tiny: every recorded layer
    assert default_pair_layers("sd3", list(range(12))) == ()


def test_sweep_records_once_per_image_and_resumes_without_recomputing(mcc_dataset, tmp_path):
    out = tmp_path / "sweep"
    fake = FakeAnchorDiff(blocks=4)
    report = run_sweep(fake, mcc_dataset, out_dir=out, steps=(10, 160), limit=3, progress=False)
    settings = 4 + 6 + 2  # 4 single layers, C(4, 2) pairs, 2 step counts
    assert fake.record_calls == 3 and fake.map_calls == 3 * settings
    assert len(report.settings) == settings
    rows = [json.loads(line) for line in (out / "sweep.jsonl").read_text().splitlines()]
    assert len(rows) == settings * 7 and all(r["status"] == "ok" for r in rows)
    assert (
        set(report.singles()) == {0, 1, 2, 3}
        and (1, 3) in report.pairs()
        and set(report.steps()) == {10, 160}
    )
    assert all(c["scored"] == 7 for c in report.counts.values())
    assert report.full_method() == report.results["steps=160"]
    markdown = (out / "sweep.md").read_text()
    assert "| L2 |" in markdown and "| L0+L1 |" in markdown and "| 160 |" in markdown
    assert (out / "figures" / "layer_sensitivity.png").stat().st_size > 10_000
    assert (out / "figures" / "propagation_steps.png").stat().st_size > 10_000

    again = FakeAnchorDiff(blocks=4)
    run_sweep(again, mcc_dataset, out_dir=out, steps=(10, 160), limit=3, progress=False, figures=False)
    assert again.record_calls == 0 and again.map_calls == 0
    more = FakeAnchorDiff(blocks=4)
    run_sweep(more, mcc_dataset, out_dir=out, steps=(10, 160), progress=False, figures=False)
    assert more.record_calls == 2 and more.map_calls == 2 * settings


def test_sweep_with_explicit_layers_and_pairs(mcc_dataset, tmp_path):
    fake = FakeAnchorDiff(blocks=6)
    report = run_sweep(fake, mcc_dataset, out_dir=tmp_path / "s", layers=[1, 4], pairs=[(1, 4)], steps=[20],
                       limit=1, progress=False, figures=False)  # fmt: skip
    assert [s["layers"] for s in report.settings] == [[1], [4], [1, 4], None]
    with pytest.raises(ValueError, match="not blocks"):
        run_sweep(
            FakeAnchorDiff(blocks=2), mcc_dataset, out_dir=tmp_path / "t", layers=[5], limit=1, progress=False
        )


def test_a_failing_setting_is_recorded_not_fatal(mcc_dataset, tmp_path):
    class Picky(FakeAnchorDiff):
        def heatmaps_from_record(self, record, *, layers=None, **kwargs):
            if layers == (2,):
                raise RuntimeError("graph is empty")
            return super().heatmaps_from_record(record, layers=layers, **kwargs)

    report = run_sweep(Picky(blocks=3), mcc_dataset, out_dir=tmp_path / "s", steps=[160], limit=2,
                       progress=False, figures=False)  # fmt: skip
    assert report.counts["layers=2"]["failed"] == 5 and report.counts["layers=1"]["scored"] == 5
    assert "5 (setting, pair) results failed" in (tmp_path / "s" / "sweep.md").read_text()


def test_a_baseline_sweeps_its_blocks_without_steps_or_a_graph(mcc_dataset, tmp_path):
    """seg4diff sweeps the blocks it averages: single blocks only (no steps, no default pairs), recorded
    without A_II (graph_layers=()); pairs when asked; its markdown names blocks, not graph layers, and
    shows no published per-layer column (the paper's are AnchorDiff's)."""
    fake = FakeAnchorDiff(blocks=4)
    report = run_sweep(fake, mcc_dataset, out_dir=tmp_path / "s", method="seg4diff", limit=2, progress=False,
                       figures=False)  # fmt: skip
    assert [s.key for s in plan_settings([0], steps=())] == ["layers=0"]
    assert [s["layers"] for s in report.settings] == [[0], [1], [2], [3]]
    assert fake.graph_layers_recorded == [(), ()] and report.configuration["steps"] == []
    markdown = (tmp_path / "s" / "sweep.md").read_text()
    assert "# seg4diff sweep" in markdown and "## Single blocks" in markdown and "published" not in markdown.split(
        "## Configuration")[0]  # fmt: skip
    paired = run_sweep(FakeAnchorDiff(blocks=4), mcc_dataset, out_dir=tmp_path / "p", method="seg4diff",
                       pair_layers=[1, 2], limit=1, progress=False, figures=False)  # fmt: skip
    assert [s["layers"] for s in paired.settings] == [[0], [1], [2], [3], [1, 2]]
    with pytest.raises(ValueError, match="cannot sweep method 'nonsense'"):
        run_sweep(fake, mcc_dataset, out_dir=tmp_path / "n", method="nonsense", progress=False)
    with pytest.raises(ValueError, match="anchordiff_multi only"):
        run_sweep(
            fake, mcc_dataset, out_dir=tmp_path / "n", method="seg4diff", thresholds=[0.5], progress=False
        )


def test_multi_anchor_sweeps_its_anchor_threshold(mcc_dataset, tmp_path):
    """anchordiff_multi adds one setting per anchor threshold (with_options(anchor_threshold=t) builds its
    maps), after layers, pairs and steps; the table lists them; thresholds outside (0, 1] are refused."""
    fake = FakeAnchorDiff(blocks=2)
    report = run_sweep(fake, mcc_dataset, out_dir=tmp_path / "s", method="anchordiff_multi", steps=[160],
                       thresholds=[0.8, 0.4], limit=2, progress=False, figures=False)  # fmt: skip
    keys = [_key for _key in report.results]
    assert keys == ["layers=0", "layers=1", "layers=0+1", "steps=160", "anchor_threshold=0.4",
                    "anchor_threshold=0.8"]  # fmt: skip
    assert set(report.thresholds()) == {0.4, 0.8}
    assert report.thresholds()[0.4] != report.thresholds()[0.8]  # the threshold reached the maps
    assert fake.map_calls == 2 * len(keys)
    markdown = (tmp_path / "s" / "sweep.md").read_text()
    assert "## Anchor threshold" in markdown and "| 0.4 |" in markdown and "| 0.8 |" in markdown
    default = run_sweep(FakeAnchorDiff(blocks=2), mcc_dataset, out_dir=tmp_path / "d", method="anchordiff_multi",
                        steps=[], limit=1, progress=False, figures=False)  # fmt: skip
    assert sorted(default.thresholds()) == [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        plan_settings([0], thresholds=[1.5])


@pytest.mark.slow
def test_a_seg4diff_block_of_the_sweep_scores_as_mcc_score_does(mcc_dataset, tmp_path):
    """On the tiny model, the sweep's seg4diff setting for block 1 (the tiny default) gives, pair for
    pair, the scores `evaluate` gives the seg4diff method; block 2 gives others."""
    from anchordiff import AnchorDiff
    from benchmark.evaluate import AnchorDiffMethod, evaluate

    ad = AnchorDiff.from_pretrained("tiny", num_inference_steps=4)
    report = run_sweep(ad, mcc_dataset, out_dir=tmp_path / "s", method="seg4diff", mode="noise", limit=2,
                       progress=False, figures=False)  # fmt: skip
    method = AnchorDiffMethod("tiny", method="seg4diff", mode="noise", pipeline=ad)
    scored = evaluate(method, mcc_dataset, out_dir=tmp_path / "e", limit=2, progress=False, figures=False)
    for metric in ("miou_fg", "map_fg", "acc_fg", "iou_target"):
        assert report.singles()[1][metric] == pytest.approx(scored.overall[metric], abs=1e-12)
    assert report.singles()[1] != report.singles()[2]
