"""Review statistics for the dataset card: how much of the machine output the reviewers kept.

Read from the records alone (the review stage logs the IoU of machine vs reviewed mask
per concept in the history event of its pull), so they can be recomputed at any time.
Written to ``<workdir>/reviews/stats.json``.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict

from manifests.record import Record, State
from manifests.store import ManifestStore
from manifests.workdir import WorkDir

STATS_PATH = WorkDir.REVIEW_STATS


def _last_pull(record: Record) -> dict | None:
    for event in reversed(record.history):
        if event.stage == "review" and event.params.get("action") == "pull":
            return event.params
    return None


def compute_stats(records: list[Record]) -> dict:
    """Statistics over the records a reviewer has decided on.

    Returns a JSON-ready dict:
    ``records``: counts of reviewed / rejected in review / in review;
    ``masks``: concept masks reviewed, accepted unedited, edited, fraction accepted unedited;
    ``records_all_accepted``: fraction of reviewed records whose every mask was accepted unedited;
    ``iou_by_group``: per concept group, mean / min IoU of machine vs reviewed mask and the count;
    ``iou_mean``: over all reviewed masks; ``rejection_reasons``: reason -> records rejected in review.
    """
    reviewed = [r for r in records if r.state == State.reviewed and _last_pull(r)]
    rejected = [
        r for r in records if r.state == State.rejected and r.rejection and r.rejection.stage == "review"
    ]
    in_review = sum(1 for r in records if r.state == State.in_review)
    statuses: Counter[str] = Counter()
    ious_by_group: dict[str, list[float]] = defaultdict(list)
    all_accepted = 0
    for record in reviewed:
        ious = _last_pull(record).get("iou") or {}
        for concept in record.concepts:
            statuses[concept.review] += 1
            if concept.name in ious:
                ious_by_group[record.group].append(float(ious[concept.name]))
        all_accepted += all(c.review == "accepted" for c in record.concepts)
    masks = statuses["accepted"] + statuses["edited"]
    every = [v for values in ious_by_group.values() for v in values]
    return {
        "records": {"reviewed": len(reviewed), "rejected_in_review": len(rejected), "in_review": in_review},
        "masks": {
            "reviewed": masks,
            "accepted_unedited": statuses["accepted"],
            "edited": statuses["edited"],
            "fraction_accepted_unedited": round(statuses["accepted"] / masks, 4) if masks else None,
        },
        "records_all_accepted": round(all_accepted / len(reviewed), 4) if reviewed else None,
        "iou_mean": round(sum(every) / len(every), 4) if every else None,
        "iou_by_group": {
            group: {
                "masks": len(values),
                "mean_iou": round(sum(values) / len(values), 4),
                "min_iou": round(min(values), 4),
            }
            for group, values in sorted(ious_by_group.items())
        },
        "rejection_reasons": dict(Counter(r.rejection.reason for r in rejected).most_common()),
    }


def write_stats(store: ManifestStore) -> dict:
    """Compute the statistics over the whole store and write ``reviews/stats.json``; returns them."""
    stats = compute_stats(list(store.iter()))
    store.write_bytes(STATS_PATH, stats_bytes(stats))
    return stats


def stats_bytes(stats: dict) -> bytes:
    """The file content of ``reviews/stats.json``."""
    return (json.dumps(stats, indent=1, ensure_ascii=False) + "\n").encode()


def read_stats(store: ManifestStore) -> dict | None:
    """The statistics last written, or None."""
    try:
        return json.loads(store.read_bytes(STATS_PATH))
    except FileNotFoundError:
        return None
