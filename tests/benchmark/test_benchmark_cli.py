"""`mcc score` and `mcc sweep` on a tiny MCC folder."""

from __future__ import annotations

import json

import datasets
import pytest
from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def private_datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


@pytest.fixture
def user_method(tmp_path, monkeypatch):
    (tmp_path / "my_grounding.py").write_text(
        "import numpy as np\n"
        "def segment(image, concepts):\n"
        "    x = np.asarray(image.convert('RGB').resize((16, 16)), dtype=float)\n"
        "    return np.stack([x[..., k % 3] for k in range(len(concepts))])\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_grounding:segment"


def test_score_a_user_method_writes_reports_and_figures(mcc_folder, tmp_path, user_method):
    out = tmp_path / "out"
    args = [
        "score",
        "--dataset",
        str(mcc_folder),
        "--method",
        user_method,
        "--out",
        str(out),
        "--no-progress",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "miou_fg" in result.output and "scored 12" in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == user_method and report["counts"]["overall"]["scored"] == 12
    assert "published (paper Table 4)" in (out / "report.md").read_text()
    assert (out / "figures" / "qualitative.png").exists()
    again = runner.invoke(app, args)  # resumes: nothing to do, same report
    assert (
        again.exit_code == 0 and json.loads((out / "report.json").read_text())["overall"] == report["overall"]
    )


def test_score_says_what_is_wrong(mcc_folder, tmp_path, user_method):
    result = runner.invoke(app, ["score", "--dataset", str(mcc_folder), "--method", "nonsense", "--out",
                                 str(tmp_path / "o")])  # fmt: skip
    assert result.exit_code == 2 and "module:function" in result.output
    result = runner.invoke(app, ["score", "--dataset", str(tmp_path / "nowhere"), "--method", user_method,
                                 "--out", str(tmp_path / "o")])  # fmt: skip
    assert result.exit_code == 2 and "cannot load the MCC dataset" in result.output
    out = tmp_path / "run"
    assert runner.invoke(app, ["score", "--dataset", str(mcc_folder), "--method", user_method, "--out", str(out),
                               "--limit", "1", "--no-progress"]).exit_code == 0  # fmt: skip
    other = runner.invoke(app, ["score", "--dataset", str(mcc_folder), "--method", "my_grounding:segment",
                                "--config", "two_concepts", "--out", str(out), "--no-progress"])  # fmt: skip
    assert other.exit_code == 2 and "different run" in other.output


def test_score_exits_non_zero_when_no_pair_could_be_scored(mcc_folder, tmp_path, monkeypatch):
    (tmp_path / "broken_grounding.py").write_text(
        "def segment(image, concepts):\n    raise RuntimeError('out of memory')\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    result = runner.invoke(app, ["score", "--dataset", str(mcc_folder), "--method", "broken_grounding:segment",
                                 "--out", str(out), "--no-progress"])  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "none of the" in result.output and "could be scored" in result.output
    failed = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    assert failed and all("out of memory" in json.dumps(row) for row in failed)


@pytest.mark.slow
def test_score_and_sweep_with_the_tiny_anchordiff(mcc_folder, tmp_path):
    out = tmp_path / "score"
    result = runner.invoke(app, ["score", "--dataset", str(mcc_folder), "--method", "anchordiff", "--model", "tiny",
                                 "--mode", "noise", "--limit", "2", "--out", str(out), "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["configuration"]["model"] == "tiny" and report["configuration"]["mode"] == "noise"
    assert report["counts"]["overall"]["pairs"] == 5 and report["counts"]["overall"]["failed"] == 0
    assert report["decisions"]["O_II heads"].startswith("concat")
    assert (out / "figures" / "qualitative.png").exists()

    sweep = tmp_path / "sweep"
    arguments = ["sweep", "--dataset", str(mcc_folder), "--model", "tiny", "--mode", "noise", "--limit", "2",
                 "--steps", "10,160", "--out", str(sweep), "--no-progress"]  # fmt: skip
    result = runner.invoke(app, arguments)  # the fixture has no validation split
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and "has no 'validation' split" in message
    assert "--split test --allow-test" in message and not sweep.exists()
    result = runner.invoke(app, [*arguments, "--split", "test"])
    assert result.exit_code == 2 and "pass --allow-test" in " ".join(result.output.split())
    result = runner.invoke(app, [*arguments, "--split", "test", "--allow-test"])
    assert result.exit_code == 0, result.output
    data = json.loads((sweep / "sweep.json").read_text())
    blocks = data["configuration"]["blocks"]
    assert blocks >= 2 and len(data["settings"]) == blocks + blocks * (blocks - 1) // 2 + 2
    assert all(c["failed"] == 0 for c in data["counts"].values())
    assert (sweep / "figures" / "layer_sensitivity.png").exists()
    assert (sweep / "figures" / "propagation_steps.png").exists()


def test_score_the_standard_benchmarks(tmp_path, user_method):
    import numpy as np
    from benchmark_fixtures import write_gtsegs, write_voc

    voc = write_voc(tmp_path / "voc")
    out = tmp_path / "voc-out"
    result = runner.invoke(app, ["score", "--dataset", str(voc), "--method", user_method, "--out", str(out),
                                 "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["protocol"] == "binary" and report["dataset"]["name"] == "voc2012-single-class"
    assert (
        report["counts"]["overall"]["scored"] == 1
        and "published (paper Table 3)" in (out / "report.md").read_text()
    )

    image = np.full((12, 10, 3), 200, np.uint8)
    mask = np.zeros((12, 10), bool)
    mask[2:8, 3:9] = True
    mat = write_gtsegs(tmp_path / "gtsegs_ijcv.mat", [image], [mask], ["n02085620_1"])
    names = tmp_path / "names.json"
    names.write_text('{"n02085620": "chihuahua"}')
    out = tmp_path / "imagenet-out"
    result = runner.invoke(app, ["score", "--dataset", str(mat), "--class-names", str(names), "--method", user_method,
                                 "--out", str(out), "--conceptattention-compat", "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert (
        report["dataset"]["name"] == "imagenet-segmentation"
        and report["metric_settings"]["conceptattention_compat"]
    )


def test_compare_puts_several_methods_in_one_grid(mcc_folder, tmp_path, user_method):
    (tmp_path / "flat_method.py").write_text(
        "import numpy as np\ndef segment(image, concepts):\n    return np.ones((len(concepts), 4, 4))\n"
    )
    first, second = tmp_path / "a", tmp_path / "b"
    common = ["score", "--dataset", str(mcc_folder), "--limit", "2", "--no-progress"]
    assert (
        runner.invoke(app, [*common, "--method", "flat_method:segment", "--out", str(first)]).exit_code == 0
    )
    grid_path = second / "figures" / "qualitative.png"
    result = runner.invoke(
        app, [*common, "--method", user_method, "--out", str(second), "--compare", str(first)]
    )
    assert result.exit_code == 0, result.output
    from PIL import Image

    with Image.open(grid_path) as grid, Image.open(first / "figures" / "qualitative.png") as single:
        assert grid.width > single.width * 1.4  # two more columns per extra method
    missing = runner.invoke(
        app, [*common, "--method", user_method, "--out", str(second), "--compare", str(tmp_path)]
    )
    assert missing.exit_code == 2 and "no run.json" in missing.output


def _scores(folder) -> dict:
    """(sample_id, target) -> what a pair scored (status, scores, leakage, anchor verdict), without timings."""
    rows = [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines()]
    kept = ("status", "scores", "leakage", "anchor_in_mask", "chance", "error")
    return {(r["sample_id"], r["target"]): {k: r.get(k) for k in kept} for r in rows}


@pytest.mark.slow
def test_several_methods_scored_together_share_one_recording_per_image(mcc_folder, tmp_path, monkeypatch):
    """`mcc score --method anchordiff,seg4diff,anchordiff_multi,cross_attention` records each image once for
    all four (counted on AnchorDiff.record) and writes --out/<method> folders whose pairs equal, score for
    score, a run of that method alone (which records on its own)."""
    from anchordiff import AnchorDiff

    calls = []
    original = AnchorDiff.record

    def counting_record(self, *args, **kwargs):
        calls.append(kwargs.get("graph_layers"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(AnchorDiff, "record", counting_record)
    methods = ["anchordiff", "seg4diff", "anchordiff_multi", "cross_attention"]
    out = tmp_path / "together"
    common = [
        "--dataset",
        str(mcc_folder),
        "--model",
        "tiny",
        "--mode",
        "noise",
        "--limit",
        "3",
        "--no-progress",
    ]
    result = runner.invoke(app, ["score", *common, "--method", ",".join(methods), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert len(calls) == 3 and all(tuple(layers) == (1, 2) for layers in calls)  # the graph methods' layers
    assert "3 attention recordings served 4 AnchorDiff methods" in " ".join(result.output.split())
    assert (out / "figures" / "qualitative.png").exists()
    for method in methods:
        report = json.loads((out / method / "report.json").read_text())
        assert report["method"] == method and report["counts"]["overall"]["failed"] == 0
    assert json.loads((out / "seg4diff" / "report.json").read_text())["configuration"]["layers"] == [1]

    for method in ("seg4diff", "anchordiff_multi"):
        calls.clear()
        alone = tmp_path / f"alone-{method}"
        result = runner.invoke(app, ["score", *common, "--method", method, "--out", str(alone)])
        assert result.exit_code == 0, result.output
        assert len(calls) == 3 and (alone / "report.json").exists()
        assert _scores(alone) == _scores(out / method)
        assert len(_scores(alone)) == 7 and all(v["status"] == "ok" for v in _scores(alone).values())
    assert _scores(out / "seg4diff") != _scores(out / "cross_attention")

    result = runner.invoke(
        app, ["score", *common, "--method", "seg4diff,seg4diff", "--out", str(tmp_path / "x")]
    )
    assert result.exit_code == 2 and "names a method twice" in result.output
