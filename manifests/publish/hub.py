"""Upload a built dataset folder to the Hugging Face Hub as one commit, tagged."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from manifests.publish.selection import PublishError
from manifests.publish.shards import CARD_PATH, DATA_DIR, MANIFEST_PATH, PREVIEW_PATH


class HubApi(Protocol):
    """The part of ``huggingface_hub.HfApi`` that ``push_dataset`` uses (tests pass a fake)."""

    def create_repo(self, repo_id: str, **kwargs: Any) -> Any: ...
    def list_repo_refs(self, repo_id: str, **kwargs: Any) -> Any: ...
    def upload_folder(self, **kwargs: Any) -> Any: ...
    def create_tag(self, repo_id: str, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class PushResult:
    repo_id: str
    tag: str
    commit: str | None
    url: str | None


def hub_token(token: str | None = None) -> str:
    """``token`` or ``HF_TOKEN``; raises ``PublishError`` saying how to get one when neither is set."""
    token = token or os.environ.get("HF_TOKEN")
    if not token:
        raise PublishError(
            "pushing needs a Hugging Face token with write access in HF_TOKEN "
            "(create one at https://huggingface.co/settings/tokens); nothing was uploaded"
        )
    return token


def hub_api(token: str | None = None) -> HubApi:
    """A ``huggingface_hub.HfApi`` authenticated with ``hub_token(token)``."""
    from huggingface_hub import HfApi

    return HfApi(token=hub_token(token))


def push_dataset(
    out_dir: str | os.PathLike,
    repo_id: str,
    *,
    tag: str,
    private: bool = False,
    api: HubApi | None = None,
    token: str | None = None,
) -> PushResult:
    """Upload a built folder to the Hub dataset repo ``repo_id`` and tag the commit.

    Creates the repo if needed (``repo_type="dataset"``). Fails before uploading anything
    when ``tag`` already exists (bump the version instead). Shards, COCO file and card of an
    earlier version that this build does not have are deleted in the same commit (a stale
    shard would otherwise join the ``data/test-*`` glob). The token comes from ``token`` or
    the ``HF_TOKEN`` environment variable.
    """
    out_dir = Path(out_dir)
    manifest_file = out_dir / MANIFEST_PATH
    if not manifest_file.exists():
        raise PublishError(
            f"{out_dir} has no {MANIFEST_PATH}: build it first with `mcc publish --out {out_dir}`"
        )
    manifest = json.loads(manifest_file.read_text())
    if api is None:
        api = hub_api(token)
    repo = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    refs = api.list_repo_refs(repo_id, repo_type="dataset")
    if any(getattr(t, "name", None) == tag for t in getattr(refs, "tags", []) or []):
        raise PublishError(f"{repo_id} already has tag {tag!r}; publish a new version with --version/--tag")
    commit = api.upload_folder(
        repo_id=repo_id,
        repo_type="dataset",
        folder_path=str(out_dir),
        allow_patterns=[f"{DATA_DIR}/*.parquet", "coco/*", CARD_PATH, PREVIEW_PATH, MANIFEST_PATH],
        delete_patterns=[f"{DATA_DIR}/*.parquet", "coco/*"],
        commit_message=f"MCC {manifest['dataset_version']} ({len(manifest['records'])} images)",
        commit_description=f"Built by `mcc publish` with code {manifest['code_version']} at {manifest['build_time']}.",
    )
    oid = commit.oid  # huggingface_hub's CommitInfo; an unchanged folder gets the head commit's
    api.create_tag(
        repo_id,
        tag=tag,
        repo_type="dataset",
        revision=oid,
        tag_message=f"MCC dataset version {manifest['dataset_version']}",
    )
    return PushResult(repo_id=repo_id, tag=tag, commit=oid, url=str(repo) if repo is not None else None)
