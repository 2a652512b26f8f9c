"""`mcc annotate` with the tiny models on a work dir holding generator-style records."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app
from manifests import Concept, GeneratedSource, ManifestStore, Record, State

runner = CliRunner()


def add_record(store: ManifestStore, record_id: str, state: State, seed: int, boxes: bool = False) -> Record:
    record = Record(
        id=record_id,
        group="lemon-lime",
        concepts=[Concept(name="lemon"), Concept(name="lime")],
        source=GeneratedSource(template="t", setting="s", seed=seed),
        state=State.planned,
    )
    image = np.random.default_rng(seed).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    store.store_image(record, Image.fromarray(image))
    record.advance(State.generated, "generate")
    if boxes:
        record.concept("lemon").boxes = [(5.0, 5.0, 60.0, 60.0)]
        record.concept("lime").boxes = [(64.0, 30.0, 120.0, 90.0)]
        record.advance(State.localized, "localize")
    assert record.state == state
    store.put(record)
    return record


@pytest.mark.slow
def test_annotate_tiny_end_to_end(workdir):
    store = ManifestStore(workdir)
    add_record(store, "gen-new", State.generated, seed=1)
    add_record(store, "gen-boxed", State.localized, seed=2, boxes=True)
    args = [
        "annotate",
        "--workdir",
        str(workdir),
        "--localizer",
        "tiny",
        "--segmenter",
        "tiny",
        "--gate",
        "permissive",
    ]
    result = runner.invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "localize" in result.output and "segment + gate" in result.output
    new, boxed = store.get("gen-new"), store.get("gen-boxed")
    assert new.state in (State.segmented, State.rejected) and new.history[-1].stage in ("localize", "quality")
    assert boxed.state == State.segmented and all(c.mask is not None for c in boxed.concepts)
    reports = list((workdir / "reports").glob("quality-*.json"))
    assert len(reports) == 1 and json.loads(reports[0].read_text())["kept"] >= 1
    again = runner.invoke(app, args)  # finished records are skipped
    assert again.exit_code == 0 and "nothing to annotate" in again.output


def test_annotate_rejects_a_bad_segmenter_reference(workdir):
    result = runner.invoke(
        app,
        [
            "annotate",
            "--workdir",
            str(workdir),
            "--localizer",
            "tiny",
            "--segmenter",
            "configs/sam2.1/sam2.1_hiera_l.yaml",
        ],
    )
    assert result.exit_code == 2 and "CONFIG:CHECKPOINT" in result.output
