"""New backends from outside the project, run from a profile with no edit to ``flows/``.

This module is the worked example of ``docs/architecture.md``: a generator backend and a
localiser backend, each a small class and a factory, registered in
``manifests.registry`` and named in a profile YAML file, then run by the rebuild flow
(against Prefect's test harness) and by the CLI. SAM2 (tiny) segments their output.
"""

from __future__ import annotations

import pytest
import yaml
from PIL import Image, ImageDraw
from prefect.testing.utilities import prefect_test_harness
from typer.testing import CliRunner

from flows.cli import app
from flows.config import load_profile
from flows.pipeline import rebuild_dataset
from manifests import GeneratedSource, ManifestStore, Record, State
from manifests.registry import GENERATORS, LOCALIZERS
from manifests.stage import with_image

pytestmark = pytest.mark.slow


# -- the two backends: 30 lines ------------------------------------------------------------------
class SquaresGenerator:
    """Draws one square per concept, side by side, on a background that depends on the seed."""

    name, accepts = "generate", (State.planned,)

    def __init__(self, config):
        self.size, self.batch_size = config.size or 96, config.batch_size
        self.colour = tuple(config.options.get("colour", (200, 40, 40)))

    def takes(self, record: Record) -> bool:
        return isinstance(record.source, GeneratedSource)

    def run(self, batch, store):
        for record in batch:
            image = Image.new("RGB", (self.size, self.size), (record.source.seed % 256, 90, 90))
            draw, step = ImageDraw.Draw(image), self.size // record.num_concepts
            for i in range(record.num_concepts):
                draw.rectangle((i * step + 4, 20, (i + 1) * step - 4, self.size - 20), fill=self.colour)
            output = with_image(record, image)  # images/<id>.png and record.image; the runner writes both
            record.advance(State.generated, "generate", {"backend": "squares"})
            yield output


class ColumnsLocalizer:
    """Boxes each concept in its column: where ``SquaresGenerator`` drew it."""

    name, accepts, batch_size = "localize", (State.generated,), 4

    def __init__(self, config):
        self.margin = config.options.get("margin", 2)

    def run(self, batch, store):
        for record in batch:
            width, height = record.image.width, record.image.height
            step = width / record.num_concepts
            for i, concept in enumerate(record.concepts):
                concept.boxes = [(i * step + self.margin, 16.0, (i + 1) * step - self.margin, height - 16.0)]
            record.advance(State.localized, "localize", {"backend": "columns"})
        return batch


GENERATORS.register("squares", SquaresGenerator)
LOCALIZERS.register("columns", ColumnsLocalizer)


# -- run from a profile ---------------------------------------------------------------------------
def write_profile(tmp_path, workdir, localize_backend: str = "columns") -> str:
    profile = {
        "workdir": str(workdir),
        "shard_size": 2,
        "plan": {"max_groups": 2, "per_group": 2},
        "generate": {
            "backend": "squares",
            "model": "squares-v1",
            "size": 96,
            "options": {"colour": [10, 200, 10]},
        },
        "localize": {"backend": localize_backend, "model": "columns", "options": {"margin": 3}},
        "segment": {"model": "tiny", "device": "cpu"},
        "quality": {"preset": "permissive"},
        "review": {"mode": "auto"},
    }
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(profile))
    return str(path)


def check_records(store: ManifestStore) -> None:
    records = list(store.iter())
    assert len(records) == 4 and store.counts().by_state.get("segmented", 0) >= 1
    for record in records:
        stages = {e.stage: e.params for e in record.history}
        assert stages["generate"] == {"backend": "squares"} and stages["localize"] == {"backend": "columns"}
        assert store.open_image(record).getpixel((record.image.width // (2 * record.num_concepts), 48)) == (
            10,
            200,
            10,
        )
        step = record.image.width / record.num_concepts
        assert record.concepts[-1].boxes == [
            pytest.approx(
                ((record.num_concepts - 1) * step + 3, 16, record.image.width - 3, record.image.height - 16)
            )
        ]
        assert "segment" in stages  # SAM2 (tiny) ran on the new backends' boxes


def test_new_backends_run_from_a_profile_in_the_rebuild_flow(tmp_path):
    workdir = tmp_path / "work"
    config = load_profile(write_profile(tmp_path, workdir))
    with prefect_test_harness(server_startup_timeout=120):
        result = rebuild_dataset(config)
    assert result["shards"] == 2
    check_records(ManifestStore(workdir))


def test_a_backend_named_by_import_path_runs_from_the_cli(tmp_path):
    workdir = tmp_path / "work"
    profile = write_profile(tmp_path, workdir, localize_backend=f"{__name__}:ColumnsLocalizer")
    runner = CliRunner()
    for command in (["plan"], ["generate"], ["annotate"]):
        result = runner.invoke(
            app, [*command, "--workdir", str(workdir), "--profile", profile], terminal_width=200
        )
        assert result.exit_code == 0, result.output
    check_records(ManifestStore(workdir))


def test_an_unknown_backend_names_the_registered_ones(tmp_path):
    workdir = tmp_path / "work"
    profile = write_profile(tmp_path, workdir, localize_backend="florence")
    runner = CliRunner()
    runner.invoke(app, ["plan", "--workdir", str(workdir), "--profile", profile])
    runner.invoke(app, ["generate", "--workdir", str(workdir), "--profile", profile])
    result = runner.invoke(
        app, ["annotate", "--workdir", str(workdir), "--profile", profile], terminal_width=300
    )
    assert result.exit_code == 2
    assert "unknown box localiser backend 'florence'" in result.output and "qwen2_5_vl" in result.output
