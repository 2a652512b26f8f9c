"""The validation / test split rule (``manifests.splits``): exact size, stratified, reproducible,
independent of row order, and the largest-remainder shares behind it and ``--limit``."""

from __future__ import annotations

import hashlib
import random

import pytest

from manifests.splits import assign_splits, largest_remainder


def test_largest_remainder_shares_in_proportion():
    assert largest_remainder({"a": 60, "b": 30, "c": 10}, 10) == {"a": 6, "b": 3, "c": 1}
    assert largest_remainder({"a": 60, "b": 30, "c": 10}, 4) == {"a": 2, "b": 1, "c": 1}  # 2.4, 1.2, 0.4
    assert largest_remainder({"a": 1, "b": 1}, 1) == {"a": 1, "b": 0}  # a tie goes to the first
    assert largest_remainder({"a": 2, "b": 1}, 10) == {"a": 2, "b": 1}  # never more than a group holds
    assert largest_remainder({"a": 0, "b": 0}, 3) == {"a": 0, "b": 0}
    assert largest_remainder({"a": 5}, 0) == {"a": 0}


def strata_of(n_per: dict[tuple[str, int], int]) -> tuple[list[str], list[tuple[str, int]]]:
    ids, strata = [], []
    for (group, k), n in n_per.items():
        for i in range(n):
            ids.append(f"{group}-{k}-{i:03d}")
            strata.append((group, k))
    return ids, strata


def test_assign_splits_is_stratified_exact_and_hash_ranked():
    ids, strata = strata_of({("dogs", 2): 50, ("dogs", 3): 25, ("citrus", 2): 20, ("rare", 3): 5})
    splits = assign_splits(ids, strata, 0.2)
    validation = [i for i in ids if splits[i] == "validation"]
    assert len(validation) == 20  # round(0.2 x 100)
    per_stratum = {s: sum(1 for i, t in zip(ids, strata, strict=True) if t == s and splits[i] == "validation")
                   for s in set(strata)}  # fmt: skip
    assert per_stratum == {("dogs", 2): 10, ("dogs", 3): 5, ("citrus", 2): 4, ("rare", 3): 1}
    for stratum in set(strata):
        members = [i for i, t in zip(ids, strata, strict=True) if t == stratum]
        ranked = sorted(members, key=lambda i: hashlib.sha256(i.encode()).hexdigest())
        assert {i for i in members if splits[i] == "validation"} == set(ranked[: per_stratum[stratum]])


def test_assign_splits_ignores_row_order_and_is_repeatable():
    ids, strata = strata_of({("a", 2): 13, ("b", 3): 7})
    first = assign_splits(ids, strata, 0.3)
    order = list(range(len(ids)))
    random.Random(4).shuffle(order)
    assert assign_splits([ids[i] for i in order], [strata[i] for i in order], 0.3) == first
    assert set(assign_splits(ids, strata, 0.0).values()) == {"test"}


def test_assign_splits_refuses_bad_input():
    with pytest.raises(ValueError, match=r"must be in \[0, 1\)"):
        assign_splits(["a"], ["s"], 1.0)
    with pytest.raises(ValueError, match="unique"):
        assign_splits(["a", "a"], ["s", "s"], 0.2)
    with pytest.raises(ValueError, match="2 ids but 1 strata"):
        assign_splits(["a", "b"], ["s"], 0.2)
