"""FLUX generation with the offline tiny pipeline: end to end through the store and the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixture_scopes import shared_unless_mutating
from typer.testing import CliRunner

from flows.cli import app
from generators.flux import FluxGenerator, build_tiny_flux_pipeline
from generators.prompts import prompt_for_record
from manifests import ManifestStore, State, add_planned, load_groups, plan_scenes
from manifests.stage import run_stage

STEPS, SIZE = 2, 64


@pytest.fixture(scope=shared_unless_mutating)
def tiny() -> FluxGenerator:
    torch.set_num_threads(2)
    return FluxGenerator("tiny", steps=STEPS, size=SIZE, batch_size=2)


def _planned_store(path, per_group=2, n_groups=2) -> ManifestStore:
    store = ManifestStore(path)
    add_planned(store, plan_scenes(load_groups()[:n_groups], per_group=per_group))
    return store


def test_tiny_pipeline_is_the_real_pipeline_class_and_seeded():
    a, b = build_tiny_flux_pipeline(seed=0), build_tiny_flux_pipeline(seed=0)
    assert type(a).__name__ == "FluxPipeline" and a.vae.config.latent_channels == 16
    assert a.transformer.config.in_channels == 4 * a.vae.config.latent_channels
    for (name, p), (_, q) in zip(
        a.transformer.named_parameters(), b.transformer.named_parameters(), strict=True
    ):
        assert torch.equal(p, q), name


def test_generate_end_to_end_provenance_and_rerun_skips(tiny, tmp_path):
    store = _planned_store(tmp_path)
    records = list(store.iter())
    out = run_stage(tiny, store, records).records
    assert [r.id for r in out] == [r.id for r in records]
    for record in out:
        saved = store.get(record.id)
        assert saved.state == State.generated
        source = saved.source
        assert (source.model, source.revision, source.steps, source.guidance) == (
            "tiny",
            "tiny-seed0",
            STEPS,
            3.5,
        )
        assert (source.width, source.height) == (SIZE, SIZE) == (saved.image.width, saved.image.height)
        assert source.prompt == prompt_for_record(saved) and source.seed is not None
        event = saved.history[-1]
        assert event.stage == "generate" and event.params["seed"] == source.seed
        assert event.params["pipeline"] == "FluxPipeline" and event.params["dtype"] == "float32"
        image = store.open_image(saved)
        assert image.size == (SIZE, SIZE) and np.asarray(image).std() > 0

    before = {r.id: (store.read_bytes(f"records/{r.id}.json"), r.image.sha256) for r in out}
    again = run_stage(tiny, store, list(store.iter()))
    assert again.records == [] and again.skipped == len(out)  # nothing left to generate
    assert {r.id: (store.read_bytes(f"records/{r.id}.json"), r.image.sha256) for r in out} == before


def test_deterministic_per_seed_alone_or_in_a_batch(tiny, tmp_path):
    store = _planned_store(tmp_path, per_group=2, n_groups=1)
    first, second = list(store.iter())
    batched = tiny._run_batch([first, second])
    alone = tiny.generate_one(first)
    again = FluxGenerator("tiny", steps=STEPS, size=SIZE, batch_size=1).generate_one(first)
    a, b, c = (np.asarray(x, dtype=np.int16) for x in (batched[0], alone, again))
    assert np.array_equal(b, c)  # same seed, same image, from a fresh generator
    assert np.abs(a - b).max() <= 1  # batching changes at most the last bit of a few pixels
    assert not np.array_equal(np.asarray(batched[1]), np.asarray(batched[0]))  # another seed, another image


def test_a_failing_image_rejects_only_its_record(tmp_path):
    generator = FluxGenerator("tiny", steps=STEPS, size=SIZE, batch_size=3)
    store = _planned_store(tmp_path, per_group=3, n_groups=1)
    records = list(store.iter())
    doomed = records[1].source.seed
    real_call = generator._call

    def failing_call(prompts, seeds):
        if doomed in seeds:
            raise RuntimeError("simulated failure")
        return real_call(prompts, seeds)

    generator._call = failing_call
    out = run_stage(generator, store, records).records
    states = [store.get(r.id).state for r in out]
    assert states == [State.generated, State.rejected, State.generated]
    rejected = store.get(records[1].id)
    assert rejected.rejection.stage == "generate" and rejected.rejection.reason == "generation_error"
    assert "simulated failure" in rejected.rejection.detail and rejected.source.prompt


def test_bad_options_fail_up_front():
    with pytest.raises(ValueError, match="multiples of 16"):
        FluxGenerator("tiny", size=70)
    with pytest.raises(ValueError, match="cpu_offload needs a CUDA"):
        FluxGenerator("tiny", device="cpu", cpu_offload=True)
    with pytest.raises(ValueError, match="dtype must be one of bfloat16, float16, float32"):
        FluxGenerator("tiny", dtype="float8")
    with pytest.raises(ValueError, match="neither a local folder"):
        FluxGenerator("no-such-model")


def test_mcc_generate_cli(tmp_path):
    store = _planned_store(tmp_path, per_group=1, n_groups=3)
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "generate",
            "--workdir",
            str(tmp_path),
            "--model",
            "tiny",
            "--steps",
            "2",
            "--size",
            "64",
            "--limit",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert sum(r.state == State.generated for r in store.iter()) == 2
    result = runner.invoke(
        app, ["generate", "--workdir", str(tmp_path), "--model", "tiny", "--steps", "2", "--size", "64"]
    )
    assert result.exit_code == 0, result.output
    assert store.counts().by_state == {"generated": 3}
    result = runner.invoke(app, ["generate", "--workdir", str(tmp_path), "--model", "tiny"])
    assert result.exit_code == 0 and "nothing to generate" in result.output
