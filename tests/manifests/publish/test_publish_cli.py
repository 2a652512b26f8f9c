"""`mcc publish` end to end, and the push path against a recording fake of HfApi (no network:
a real upload to the Hub is not exercised here)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from datasets import load_dataset
from typer.testing import CliRunner

import manifests.publish.hub as publish_module
from flows.cli import app
from manifests.publish import PublishError, build_dataset, push_dataset


@dataclass
class RecordingHub:
    """Answers like huggingface_hub.HfApi and records every call."""

    tags: list[str] = field(default_factory=list)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return f"https://huggingface.co/datasets/{repo_id}"

    def list_repo_refs(self, repo_id, **kwargs):
        self.calls.append(("list_repo_refs", {"repo_id": repo_id, **kwargs}))
        return SimpleNamespace(tags=[SimpleNamespace(name=t) for t in self.tags], branches=[])

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        return SimpleNamespace(oid="c0ffee" * 6 + "beef")

    def create_tag(self, repo_id, **kwargs):
        self.calls.append(("create_tag", {"repo_id": repo_id, **kwargs}))
        self.tags.append(kwargs["tag"])


def test_push_creates_repo_uploads_and_tags(small_store, tmp_path):
    out = tmp_path / "dataset"
    build_dataset(small_store, out, version="1.0.0")
    hub = RecordingHub()
    result = push_dataset(out, "my-org/mcc", tag="v1.0.0", api=hub)
    names = [name for name, _ in hub.calls]
    assert names == ["create_repo", "list_repo_refs", "upload_folder", "create_tag"]
    create, _, upload, tag = (kwargs for _, kwargs in hub.calls)
    assert create["repo_type"] == "dataset" and create["exist_ok"] is True
    assert upload["repo_id"] == "my-org/mcc" and upload["repo_type"] == "dataset"
    assert upload["folder_path"] == str(out)
    assert "data/*.parquet" in upload["delete_patterns"]  # shards of an older version do not linger
    assert "1.0.0" in upload["commit_message"]
    assert tag["tag"] == "v1.0.0" and tag["revision"] == result.commit and tag["repo_type"] == "dataset"

    with pytest.raises(PublishError, match="already has tag"):
        push_dataset(out, "my-org/mcc", tag="v1.0.0", api=hub)
    assert [name for name, _ in hub.calls].count("upload_folder") == 1  # refused before uploading


def test_cli_builds_a_loadable_folder(small_store, tmp_path, cache_dir):
    out = tmp_path / "dataset"
    result = CliRunner().invoke(
        app,
        [
            "publish",
            "--workdir",
            small_store.workdir,
            "--out",
            str(out),
            "--include-unreviewed",
            "--version",
            "0.2.0",
            "--shard-size",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "9" in result.output and "excluded: 0" in result.output and "load_dataset" in result.output
    rows = [load_dataset(str(out), split=s, cache_dir=cache_dir).num_rows for s in ("validation", "test")]
    assert rows == [2, 7] and "split validation" in result.output
    assert json.loads((out / "manifest.json").read_text())["include"] == [
        "in_review",
        "reviewed",
        "segmented",
    ]


def test_cli_reports_exclusions_and_empty_manifests(small_store, tmp_path):
    record = small_store.get("gen-2-0000")
    record.concepts[0].mask = None
    small_store.put(record)
    result = CliRunner().invoke(app, ["publish", "-w", small_store.workdir, "--out", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert "gen-2-0000" in result.output and "mask_missing" in result.output

    empty = CliRunner().invoke(
        app, ["publish", "-w", str(tmp_path / "nothing"), "--out", str(tmp_path / "e")]
    )
    assert empty.exit_code == 2 and "--include-unreviewed" in empty.output
    assert not (tmp_path / "e").exists()


def test_cli_push_needs_a_token_and_uses_the_hub_api(small_store, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    out = tmp_path / "dataset"
    args = [
        "publish",
        "-w",
        small_store.workdir,
        "--out",
        str(out),
        "--push",
        "my-org/mcc",
        "--version",
        "1.1",
    ]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2 and "HF_TOKEN" in refused.output
    assert not out.exists()  # checked before building

    hub = RecordingHub()
    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    monkeypatch.setattr(publish_module, "hub_api", lambda token=None: hub)
    pushed = CliRunner().invoke(app, args)
    assert pushed.exit_code == 0, pushed.output
    assert hub.tags == ["v1.1"]
    assert 'load_dataset("my-org/mcc", split="test")' in (out / "README.md").read_text()
