"""MPCS pair sampling: one group, two different magnifications, each strategy's rule."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from skdfl.pretrain import DEFAULT_PAIR_TABLE, normalize_magnification, sample_pairs

MAGS = ("40X", "100X", "200X", "400X")


def breakhis_like(seed=0):
    """Patients with several images at some of the four magnifications (one seen at a single magnification)."""
    rng = np.random.default_rng(seed)
    mags, groups = [], []
    for patient in range(6):
        present = MAGS if patient < 3 else tuple(rng.choice(MAGS, size=2, replace=False))
        for mag in present:
            for _ in range(rng.integers(1, 4)):
                mags.append(mag)
                groups.append(f"p{patient}")
    mags += ["40X", "40X"]  # a patient at one magnification only: never part of a pair
    groups += ["lonely", "lonely"]
    return mags, groups


def check_common(pairs, mags, groups):
    assert pairs.ndim == 2 and pairs.shape[1] == 2 and pairs.dtype == np.int64
    for a, b in pairs:
        assert groups[a] == groups[b]
        assert mags[a] != mags[b]
        assert groups[a] != "lonely"


@pytest.mark.parametrize("seed", range(5))
def test_fixed_pairs_are_the_two_given_magnifications(seed):
    mags, groups = breakhis_like(seed)
    pairs = sample_pairs(mags, groups, "fixed", fixed_pair=("200X", "400X"), rng=seed)
    check_common(pairs, mags, groups)
    assert {(mags[a], mags[b]) for a, b in pairs} == {("200X", "400X")}
    # every 200X image of a patient that also has 400X is an anchor exactly once
    eligible = [i for i, m in enumerate(mags) if m == "200X" and "400X" in {mags[j] for j in range(len(mags)) if groups[j] == groups[i]}]
    assert sorted(pairs[:, 0].tolist()) == eligible


@pytest.mark.parametrize("seed", range(5))
def test_ordered_pairs_follow_the_table(seed):
    mags, groups = breakhis_like(seed)
    pairs = sample_pairs(mags, groups, "ordered", rng=seed)
    check_common(pairs, mags, groups)
    for a, b in pairs:
        assert mags[b] == DEFAULT_PAIR_TABLE[mags[a]]
    custom = {"40X": "400X", "400X": "40X"}
    pairs = sample_pairs(mags, groups, "ordered", pair_table=custom, rng=seed)
    check_common(pairs, mags, groups)
    assert all(mags[b] == custom[mags[a]] for a, b in pairs)
    assert {mags[a] for a, _ in pairs} <= {"40X", "400X"}


def test_random_pairs_cover_every_ordered_combination():
    mags, groups = breakhis_like(0)
    seen = Counter()
    for seed in range(30):
        pairs = sample_pairs(mags, groups, "random", rng=seed)
        check_common(pairs, mags, groups)
        # every image of a group seen at >= 2 magnifications anchors exactly one pair per epoch
        assert len(pairs) == sum(1 for g in groups if g != "lonely") and len(set(pairs[:, 0])) == len(pairs)
        seen.update((mags[a], mags[b]) for a, b in pairs)
    assert set(seen) == {(a, b) for a, b in itertools.permutations(MAGS, 2)}


def test_same_seed_same_pairs_and_epochs_differ():
    mags, groups = breakhis_like(0)
    one = sample_pairs(mags, groups, "random", rng=3)
    np.testing.assert_array_equal(one, sample_pairs(mags, groups, "random", rng=3))
    assert not np.array_equal(one, sample_pairs(mags, groups, "random", rng=4))


def test_same_centre_rows_as_groups_with_wide_column_names():
    # Wide layout (one row per centre) becomes groups = rows: both images of a pair are the same centre.
    mags = ["x20", "x5", "x10"] * 4
    groups = [row for row in range(4) for _ in range(3)]
    pairs = sample_pairs(mags, groups, "ordered", pair_table={"x20": "x5", "x5": "x10", "x10": "x20"}, rng=0)
    check_common(pairs, mags, groups)
    assert len(pairs) == 12


def test_normalize_magnification_spellings():
    assert {normalize_magnification(v) for v in (40, "40", "40x", "40X", " 40 X", 40.0)} == {"40X"}
    assert normalize_magnification(2.5) == "2.5X"
    assert normalize_magnification("x20") == "x20"
    mags = [40, 100, 40, 100]
    pairs = sample_pairs(mags, ["a", "a", "b", "b"], "fixed", fixed_pair=("40x", 100), rng=0)
    assert len(pairs) == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "diagonal"}, "pair_strategy must be one of"),
        ({"strategy": "fixed", "fixed_pair": ("200X", "200X")}, "two different"),
        ({"strategy": "fixed", "fixed_pair": "200X"}, "two magnifications"),
        ({"strategy": "fixed", "fixed_pair": ("200X", "1000X")}, r"no image at \['1000X'\]"),
        ({"strategy": "ordered", "pair_table": {"40X": "40X"}}, "to themselves"),
        ({"strategy": "ordered", "pair_table": {"x20": "x5"}}, "shares no magnification"),
    ],
)
def test_bad_strategy_settings_raise_clear_errors(kwargs, message):
    mags, groups = breakhis_like(0)
    with pytest.raises(ValueError, match=message):
        sample_pairs(mags, groups, **kwargs)


def test_no_possible_pair_names_what_is_missing():
    with pytest.raises(ValueError, match=r"no group has images at two different magnifications.*\['100X', '40X'\]"):
        sample_pairs(["40X", "100X"], ["a", "b"], "random")
    with pytest.raises(ValueError, match="2 magnifications but 1 groups"):
        sample_pairs(["40X", "100X"], ["a"], "random")
