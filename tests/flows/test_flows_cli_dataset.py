import numpy as np
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app
from manifests import ManifestStore, State, encode_mask, load_groups

runner = CliRunner()


def test_plan_twice_then_status(workdir):
    result = runner.invoke(app, ["plan", "--workdir", str(workdir), "--per-group", "2", "--seed", "3"])
    assert result.exit_code == 0, result.output
    groups = len(load_groups())
    assert f"{2 * groups} new" in result.output
    again = runner.invoke(app, ["plan", "--workdir", str(workdir), "--per-group", "2", "--seed", "3"])
    assert "0 new" in again.output
    status = runner.invoke(app, ["status", "--workdir", str(workdir)])
    assert status.exit_code == 0
    assert "planned" in status.output and str(2 * groups) in status.output


def test_plan_with_invalid_groups_file_writes_nothing(workdir, tmp_path):
    bad = tmp_path / "groups.yaml"
    bad.write_text("groups:\n  - {id: solo, domain: food, concepts: [lemon]}\n")
    result = runner.invoke(app, ["plan", "--workdir", str(workdir), "--groups", str(bad)])
    assert result.exit_code == 2
    assert "solo" in result.output
    assert not (workdir / "records").exists()


def test_status_lists_rejections_and_unreadable_files(workdir):
    runner.invoke(app, ["plan", "--workdir", str(workdir), "--per-group", "1"])
    store = ManifestStore(workdir)
    record = next(store.iter())
    store.put(record.reject("scrape", "licence", "CC BY-NC is not allowed"))
    (workdir / "records" / "junk.json").write_text("not json")
    result = runner.invoke(app, ["status", "--workdir", str(workdir)], terminal_width=200)
    assert "licence" in result.output and "scrape" in result.output
    assert "junk.json" in result.output


def test_show_draws_masks_boxes_and_legend(workdir, tmp_path):
    runner.invoke(app, ["plan", "--workdir", str(workdir), "--per-group", "1"])
    store = ManifestStore(workdir)
    record = next(store.iter())
    store.store_image(record, Image.new("RGB", (120, 80), (0, 0, 0)))
    mask = np.zeros((80, 120), bool)
    mask[10:40, 10:50] = True
    record.concepts[0].mask = encode_mask(mask)
    record.concepts[0].boxes = [(10.0, 10.0, 50.0, 40.0)]
    record.state = State.segmented  # a fixture: the stages' path is tested elsewhere
    store.put(record)
    out = tmp_path / "show.png"
    result = runner.invoke(app, ["show", record.id, "--workdir", str(workdir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    picture = np.asarray(Image.open(out).convert("RGB"))
    assert picture.shape[1] == 120 and picture.shape[0] > 80  # legend strip below the image
    assert picture[25, 30].sum() > 0  # masked pixel tinted with the concept colour
    assert picture[60, 100].sum() == 0  # background untouched


def test_show_unknown_record_and_missing_image(workdir, tmp_path):
    result = runner.invoke(app, ["show", "nope", "--workdir", str(workdir), "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "nope" in result.output
    runner.invoke(app, ["plan", "--workdir", str(workdir), "--per-group", "1"])
    record_id = ManifestStore(workdir).ids()[0]
    result = runner.invoke(
        app, ["show", record_id, "--workdir", str(workdir), "--out", str(tmp_path / "x.png")]
    )
    assert result.exit_code == 2 and "no image yet" in result.output


def test_status_verify_reports_a_forged_index_entry_and_rebuilds(workdir):
    import json

    runner.invoke(app, ["plan", "--workdir", str(workdir), "--per-group", "1"])
    index = workdir / "indexes" / "records.json"
    document = json.loads(index.read_text())
    first = sorted(document["records"])[0]
    document["records"][first][3] = "reviewed"  # the state column of a planned record
    index.write_text(json.dumps(document))
    plain = runner.invoke(app, ["status", "--workdir", str(workdir)], terminal_width=200)
    assert "reviewed" in plain.output  # the file identities match: the index is trusted
    verified = runner.invoke(app, ["status", "--workdir", str(workdir), "--verify"], terminal_width=200)
    assert verified.exit_code == 0
    assert f"record index disagreed with 1 records (rebuilt): {first}" in verified.output
    assert "reviewed" not in verified.output.split("(rebuilt)")[1]
    again = runner.invoke(app, ["status", "--workdir", str(workdir), "--verify"], terminal_width=200)
    assert "no difference" in again.output
