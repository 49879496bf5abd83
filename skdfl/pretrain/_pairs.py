"""MPCS pair sampling (Chhipa et al., WACV 2023): positives are two images of one group (sample / patient,
or one tissue centre) at two different magnifications.

Every epoch draws one pair per *anchor* image, the anchor giving the first magnification:

``"fixed"``
    Anchors are the images at ``fixed_pair[0]``; the partner is an image of the same group at
    ``fixed_pair[1]`` (the paper's fixed pair is 200X / 400X).
``"ordered"``
    Anchors are all images whose group has the table's partner magnification; the partner is an image of
    the same group at ``pair_table[anchor magnification]`` (default :data:`DEFAULT_PAIR_TABLE`: 40X->100X,
    100X->200X, 200X->400X, 400X->200X).
``"random"``
    Anchors are all images of groups seen at two magnifications or more; the partner's magnification is
    drawn uniformly among the group's *other* magnifications, then an image at it.

The two images of a pair are never at the same magnification.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

__all__ = ["DEFAULT_PAIR_TABLE", "PAIR_STRATEGIES", "normalize_magnification", "sample_pairs"]

PAIR_STRATEGIES = ("fixed", "ordered", "random")

# The ordered-pair look-up of MPCS on BreakHis: each magnification to the next; 400X, having no next, to 200X.
DEFAULT_PAIR_TABLE = {"40X": "100X", "100X": "200X", "200X": "400X", "400X": "200X"}

_NUMERIC_MAGNIFICATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[xX]?\s*$")


def normalize_magnification(value: Hashable) -> str:
    """One spelling per magnification: ``40``, ``"40"``, ``"40x"`` and ``"40X"`` all become ``"40X"``.

    Anything that is not a number (optionally followed by ``x``) is kept as its string, e.g. a column
    name such as ``"x20"``.
    """
    text = str(value)
    match = _NUMERIC_MAGNIFICATION.match(text)
    if match is None:
        return text
    number = float(match.group(1))
    return f"{int(number) if number.is_integer() else number}X"


def _check_strategy(strategy, fixed_pair, pair_table, present: set[str]) -> tuple[tuple[str, str] | None, dict]:
    if strategy not in PAIR_STRATEGIES:
        raise ValueError(f"pair_strategy must be one of {PAIR_STRATEGIES}, got {strategy!r}")
    fixed = None
    if strategy == "fixed":
        if fixed_pair is None or isinstance(fixed_pair, str) or len(fixed_pair) != 2:
            raise ValueError(f"fixed_pair must be two magnifications, e.g. ('200X', '400X'), got {fixed_pair!r}")
        fixed = (normalize_magnification(fixed_pair[0]), normalize_magnification(fixed_pair[1]))
        if fixed[0] == fixed[1]:
            raise ValueError(f"fixed_pair must name two different magnifications, got {fixed_pair!r}")
        missing = [m for m in fixed if m not in present]
        if missing:
            raise ValueError(f"fixed_pair {fixed_pair!r}: no image at {missing}; magnifications present: {sorted(present)}")
    table: dict[str, str] = {}
    if strategy == "ordered":
        raw = DEFAULT_PAIR_TABLE if pair_table is None else pair_table
        if not isinstance(raw, Mapping) or not raw:
            raise ValueError(f"pair_table must be a non-empty mapping first -> second magnification, got {raw!r}")
        table = {normalize_magnification(k): normalize_magnification(v) for k, v in raw.items()}
        same = [k for k, v in table.items() if k == v]
        if same:
            raise ValueError(f"pair_table maps {same} to themselves; a pair needs two different magnifications")
        if not set(table) & present:
            raise ValueError(
                f"pair_table {dict(raw)!r} shares no magnification with the data ({sorted(present)}); "
                "pass a pair_table over these names"
            )
    return fixed, table


def sample_pairs(
    magnifications: Sequence[Hashable],
    groups: Sequence[Hashable],
    strategy: str = "ordered",
    *,
    fixed_pair: Sequence[Hashable] | None = ("200X", "400X"),
    pair_table: Mapping[Hashable, Hashable] | None = None,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Draw one epoch of MPCS positive pairs.

    Parameters
    ----------
    magnifications : sequence of hashable, length n_images
        Magnification of every image (``40``, ``"40X"``... see :func:`normalize_magnification`).
    groups : sequence of hashable, length n_images
        The MPCS set every image belongs to: its sample / patient, or its tissue centre.
    strategy : {"fixed", "ordered", "random"}, default="ordered"
        See the module docstring.
    fixed_pair : (first, second), default=("200X", "400X")
        Magnifications of the ``"fixed"`` strategy.
    pair_table : mapping, optional
        First -> second magnification of the ``"ordered"`` strategy; ``None`` is :data:`DEFAULT_PAIR_TABLE`.
    rng : numpy.random.Generator or int, optional

    Returns
    -------
    ndarray of shape (n_pairs, 2), dtype int64
        Row positions ``(anchor, partner)`` into ``magnifications``, in random order.

    Raises
    ------
    ValueError
        Unknown strategy, bad table / pair, or no group offering a single valid pair (the message lists
        the magnifications present).
    """
    mags = [normalize_magnification(m) for m in magnifications]
    if len(mags) != len(groups):
        raise ValueError(f"{len(mags)} magnifications but {len(groups)} groups; one of each per image")
    present = set(mags)
    fixed, table = _check_strategy(strategy, fixed_pair, pair_table, present)
    rng = np.random.default_rng(rng)

    by_group: dict[Hashable, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, (group, mag) in enumerate(zip(groups, mags, strict=True)):
        by_group[group][mag].append(i)

    anchors: list[int] = []
    partners: list[int] = []
    for i, (group, mag) in enumerate(zip(groups, mags, strict=True)):
        at = by_group[group]
        if strategy == "fixed":
            second = fixed[1] if mag == fixed[0] else None
        elif strategy == "ordered":
            second = table.get(mag)
        else:
            others = sorted(m for m in at if m != mag)
            second = others[rng.integers(len(others))] if others else None
        if second is None or second not in at:
            continue
        candidates = at[second]
        anchors.append(i)
        partners.append(candidates[rng.integers(len(candidates))])

    if not anchors:
        wanted = {
            "fixed": f"images at both {fixed[0] if fixed else '?'} and {fixed[1] if fixed else '?'}",
            "ordered": f"images at a magnification and its partner in pair_table {table}",
            "random": "images at two different magnifications",
        }[strategy]
        raise ValueError(
            f"pair_strategy={strategy!r}: no group has {wanted}; magnifications present: {sorted(present)}, "
            f"{len(by_group)} groups"
        )
    pairs = np.stack([np.asarray(anchors, dtype=np.int64), np.asarray(partners, dtype=np.int64)], axis=1)
    return pairs[rng.permutation(len(pairs))]
