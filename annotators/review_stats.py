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
    ``boxes``: concepts of reviewed records whose boxes the reviewer changed;
    ``records_all_accepted``: fraction of reviewed records whose every mask was accepted unedited;
    ``iou_by_group`` / ``iou_by_concept``: mean / min IoU of machine vs reviewed mask and the count;
    ``iou_mean``: over all reviewed masks; ``rejection_reasons``: reason -> records rejected in review;
    ``time_per_task``: Label Studio's ``lead_time`` of the decided tasks (seconds: mean, median);
    ``annotators``: per reviewer, records reviewed / rejected, masks and boxes edited, mean seconds;
    ``inter_annotator`` (tasks with several annotators): records decided by agreement, the lowest pairwise
    mask IoU between the agreeing annotators by group and by concept, and the records whose annotators
    disagreed (ever, and now waiting in review for one more annotation).
    """
    reviewed = [r for r in records if r.state == State.reviewed and _last_pull(r)]
    rejected = [
        r for r in records if r.state == State.rejected and r.rejection and r.rejection.stage == "review"
    ]
    in_review = sum(1 for r in records if r.state == State.in_review)
    statuses: Counter[str] = Counter()
    ious_by_group: dict[str, list[float]] = defaultdict(list)
    ious_by_concept: dict[str, list[float]] = defaultdict(list)
    all_accepted = boxes_edited = 0
    for record in reviewed:
        pull = _last_pull(record)
        ious = pull.get("iou") or {}
        for concept in record.concepts:
            statuses[concept.review] += 1
            if concept.name in ious:
                ious_by_group[record.group].append(float(ious[concept.name]))
                ious_by_concept[concept.name].append(float(ious[concept.name]))
        boxes_edited += len(pull.get("boxes_edited") or [])
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
        "boxes": {"concepts_reviewed": masks, "concepts_with_box_edits": boxes_edited},
        "records_all_accepted": round(all_accepted / len(reviewed), 4) if reviewed else None,
        "iou_mean": round(sum(every) / len(every), 4) if every else None,
        "iou_by_group": _iou_table(ious_by_group),
        "iou_by_concept": _iou_table(ious_by_concept),
        "rejection_reasons": dict(Counter(r.rejection.reason for r in rejected).most_common()),
        "time_per_task": _seconds([_last_pull(r) for r in reviewed + rejected]),
        "annotators": _annotators(reviewed, rejected),
        "inter_annotator": _inter_annotator(records, reviewed),
    }


def _iou_table(values_by_key: dict[str, list[float]]) -> dict[str, dict]:
    return {
        key: {
            "masks": len(values),
            "mean_iou": round(sum(values) / len(values), 4),
            "min_iou": round(min(values), 4),
        }
        for key, values in sorted(values_by_key.items())
    }


def _inter_annotator(records: list[Record], reviewed: list[Record]) -> dict:
    """Agreement of several annotators per task, from the pull events' ``agreement`` (``review.consensus``)."""
    by_group: dict[str, list[float]] = defaultdict(list)
    by_concept: dict[str, list[float]] = defaultdict(list)
    decided = 0
    for record in reviewed:
        agreement = (_last_pull(record) or {}).get("agreement")
        if not agreement:
            continue
        decided += 1
        for name, value in (agreement.get("iou") or {}).items():
            by_group[record.group].append(float(value))
            by_concept[name].append(float(value))
    disagreed = waiting = 0
    for record in records:
        events = [
            e for e in record.history if e.stage == "review" and e.params.get("action") == "disagreement"
        ]
        disagreed += bool(events)
        waiting += bool(events) and record.history[-1] is events[-1]  # nothing since: still in review
    return {
        "records_decided_by_agreement": decided,
        "iou_by_group": _iou_table(by_group),
        "iou_by_concept": _iou_table(by_concept),
        "records_with_disagreement": disagreed,
        "waiting_for_another_annotation": waiting,
    }


def _seconds(pulls: list[dict | None]) -> dict:
    """Mean and median ``lead_time`` of the pulls that recorded one."""
    times = sorted(float(p["lead_time"]) for p in pulls if p and p.get("lead_time") is not None)
    if not times:
        return {"tasks": 0, "mean_seconds": None, "median_seconds": None}
    middle = len(times) // 2
    median = times[middle] if len(times) % 2 else (times[middle - 1] + times[middle]) / 2
    return {
        "tasks": len(times),
        "mean_seconds": round(sum(times) / len(times), 2),
        "median_seconds": round(median, 2),
    }


def _annotators(reviewed: list[Record], rejected: list[Record]) -> dict[str, dict]:
    """Per reviewer (the pull's ``reviewer``): what they decided and how long it took them."""
    rows: dict[str, dict] = {}
    times: dict[str, list[float]] = defaultdict(list)
    for record in reviewed + rejected:
        pull = _last_pull(record)
        if not pull:
            continue
        who = str(pull.get("reviewer") or "unknown")
        row = rows.setdefault(who, {"reviewed": 0, "rejected": 0, "masks_edited": 0, "boxes_edited": 0})
        if record.state == State.reviewed:
            row["reviewed"] += 1
            row["masks_edited"] += sum(c.review == "edited" for c in record.concepts)
            row["boxes_edited"] += len(pull.get("boxes_edited") or [])
        else:
            row["rejected"] += 1
        if pull.get("lead_time") is not None:
            times[who].append(float(pull["lead_time"]))
    for who, row in rows.items():
        row["mean_seconds"] = round(sum(times[who]) / len(times[who]), 2) if times[who] else None
    return dict(sorted(rows.items()))


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
