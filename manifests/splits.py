"""The dataset's splits: ``validation`` (to tune on) and ``test`` (to report), disjoint by image.

``assign_splits(ids, strata, fraction)`` puts ``round(fraction * N)`` images into validation,
shared out over the strata (group x number of concepts) in proportion to their size by
``largest_remainder`` (so every stratum of 5 or more images at 20% has images in both
splits). Within a stratum the images are ranked by the sha256 of their id and the first
ones go to validation: the assignment depends only on the ids, never on their order or on
the machine, and a later build with more records moves only the images near the cut.
Pure Python, no heavy imports (``benchmark`` uses ``largest_remainder`` for ``--limit``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Mapping, Sequence

SPLITS = ("validation", "test")
"""Split names in the order a dataset lists them."""

DEFAULT_VALIDATION_FRACTION = 0.2


def largest_remainder(sizes: Mapping[Hashable, int], total: int) -> dict[Hashable, int]:
    """Share ``total`` out over groups in proportion to ``sizes`` (Hamilton's method): each gets
    the floor of its exact share, the rest go one each to the largest remainders (ties in the
    mapping's order). Never more than a group's size; sums to ``min(total, sum(sizes))``."""
    whole = sum(sizes.values())
    total = min(total, whole)
    if whole == 0 or total <= 0:
        return dict.fromkeys(sizes, 0)
    exact = {key: total * size / whole for key, size in sizes.items()}
    quotas = {key: int(value) for key, value in exact.items()}
    order = list(sizes)
    by_remainder = sorted(order, key=lambda key: (-(exact[key] - quotas[key]), order.index(key)))
    for key in by_remainder[: total - sum(quotas.values())]:
        quotas[key] += 1
    return quotas


def _rank(record_id: str) -> str:
    return hashlib.sha256(record_id.encode("utf-8")).hexdigest()


def assign_splits(
    ids: Sequence[str], strata: Sequence[Hashable], fraction: float = DEFAULT_VALIDATION_FRACTION
) -> dict[str, str]:
    """Record id -> ``"validation"`` or ``"test"``; ``strata[i]`` is the stratum of ``ids[i]``.

    Raises ValueError for a fraction outside [0, 1), duplicate ids, or mismatched lengths.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(
            f"the validation fraction must be in [0, 1) (test keeps the rest), got {fraction}; "
            "0 builds a test split only"
        )
    if len(ids) != len(strata):
        raise ValueError(f"{len(ids)} ids but {len(strata)} strata")
    if len(set(ids)) != len(ids):
        raise ValueError("record ids must be unique to be split")
    members: dict[Hashable, list[str]] = {}
    for record_id, stratum in zip(ids, strata, strict=True):
        members.setdefault(stratum, []).append(record_id)
    ordered = dict(sorted(members.items(), key=lambda item: str(item[0])))
    quotas = largest_remainder({s: len(m) for s, m in ordered.items()}, round(fraction * len(ids)))
    splits = {}
    for stratum, stratum_ids in ordered.items():
        ranked = sorted(stratum_ids, key=_rank)
        for position, record_id in enumerate(ranked):
            splits[record_id] = "validation" if position < quotas[stratum] else "test"
    return splits
