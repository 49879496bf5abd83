"""MPCS, Magnification Prior Contrastive Similarity (Chhipa et al., WACV 2023): positives are one sample seen
at two magnifications."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.utils._param_validation import StrOptions

from ._base import COMMON_PARAMETERS_DOC, FITTED_ATTRIBUTES_DOC, ContrastivePretrainer, TrainingSet
from ._pairs import PAIR_STRATEGIES, normalize_magnification, sample_pairs

__all__ = ["LONG_COLUMNS", "MPCSPretrainer"]

LONG_COLUMNS = ("path", "magnification", "group")


def _is_missing(cell) -> bool:
    return cell is None or (isinstance(cell, float) and np.isnan(cell))


class MPCSPretrainer(ContrastivePretrainer):
    _method = "MPCS"

    __doc__ = (
        """Self-supervised MPCS pretraining: one sample at two magnifications is a positive pair.

    Chhipa et al. pretrain on BreakHis, where every patient has images at 40X, 100X, 200X and 400X: two
    images of one patient at two different magnifications form a positive pair, the other images of the
    batch the negatives, with SimCLR's NT-Xent loss. Both views go through the same (uniform) stochastic
    augmentation policy. ``X`` comes in one of two layouts:

    * **long** (BreakHis-like): one row per image, columns ``path`` (a path, array or ImageSource),
      ``magnification`` (``40``, ``"40X"``...) and ``group`` (the sample / patient whose images form one
      MPCS set);
    * **wide, same centre**: one row per tissue centre, one column per magnification (e.g. ``x20`` and
      ``x5`` slide regions from :mod:`skdfl.wsi`, arrays or paths), so that a pair is the *exact same
      tissue* at two magnifications, which BreakHis cannot offer. Used whenever ``X`` has no
      ``magnification`` column; empty cells (``None`` / NaN) are skipped.

    Pair strategies (:func:`sample_pairs`; one pair per anchor image per epoch, the two never at the same
    magnification): ``"fixed"`` (``fixed_pair``, e.g. 200X / 400X), ``"ordered"`` (the anchor's
    magnification, then its entry in ``pair_table``), ``"random"`` (any other magnification of the group).

    Parameters
    ----------"""
        + COMMON_PARAMETERS_DOC.format(
            resize="stretch", temperature=0.1, batch_size=32, max_epochs=100, optimizer="adam",
            crop_scale=None, color_jitter=0.125, gray_probability=0.0, blur_probability=0.0,
        )  # fmt: skip
        + """
    pair_strategy : {"fixed", "ordered", "random"}, default="ordered"
        How the two magnifications of a pair are chosen (see above).
    fixed_pair : (first, second), default=("200X", "400X")
        The magnifications of ``"fixed"`` (column names in the wide layout).
    pair_table : dict, default=None
        First -> second magnification of ``"ordered"``; ``None`` is MPCS's BreakHis table (40X->100X,
        100X->200X, 200X->400X, 400X->200X). Required in the wide layout unless its columns are named so.
    same_augmentation : bool, default=False
        Apply one random draw of the augmentation to both images of a pair (what the authors' code sets out
        to do) instead of independent draws.
"""
        + FITTED_ATTRIBUTES_DOC
        + """
    magnifications_ : list of str
        Magnifications seen in ``fit`` (normalised: ``40`` -> ``"40X"``; wide layout: column names).
    n_groups_ : int
        MPCS sets (groups in the long layout, rows in the wide one).
    layout_ : {"long", "wide"}
        The layout ``X`` was read as.

    Notes
    -----
    The defaults follow the MPCS configuration where it suits small CPU runs: temperature 0.1, projection
    to 128, images stretched to a square, mild colour jitter with flips and rotations. The paper trains a
    ImageNet-initialised ResNet-50 with LARS for 1000 epochs: ``backbone="resnet50.tv_in1k",
    pretrained=True, optimizer="lars"``.

    See Also
    --------
    SimCLRPretrainer : positives are two augmentations of one image.
    sample_pairs : the pair strategies.
    """
    )

    _parameter_constraints: dict = {
        **ContrastivePretrainer._parameter_constraints,
        "pair_strategy": [StrOptions(set(PAIR_STRATEGIES))],
        "fixed_pair": [tuple, list],
        "pair_table": [dict, None],
        "same_augmentation": ["boolean"],
    }

    def __init__(
        self,
        backbone="resnet18",
        *,
        pretrained=False,
        checkpoint_path=None,
        image_size=224,
        resize="stretch",
        temperature=0.1,
        projection_dim=128,
        batch_size=32,
        max_epochs=100,
        lr=1e-3,
        weight_decay=1e-6,
        optimizer="adam",
        lr_schedule="cosine",
        crop_scale=None,
        flip_rotate=True,
        color_jitter=0.125,
        gray_probability=0.0,
        blur_probability=0.0,
        pair_strategy="ordered",
        fixed_pair=("200X", "400X"),
        pair_table=None,
        same_augmentation=False,
        num_workers=0,
        random_state=0,
        device="auto",
        precision="auto",
        checkpoint_dir=None,
        verbose=1,
    ):
        self.backbone = backbone
        self.pretrained = pretrained
        self.checkpoint_path = checkpoint_path
        self.image_size = image_size
        self.resize = resize
        self.temperature = temperature
        self.projection_dim = projection_dim
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.optimizer = optimizer
        self.lr_schedule = lr_schedule
        self.crop_scale = crop_scale
        self.flip_rotate = flip_rotate
        self.color_jitter = color_jitter
        self.gray_probability = gray_probability
        self.blur_probability = blur_probability
        self.pair_strategy = pair_strategy
        self.fixed_pair = fixed_pair
        self.pair_table = pair_table
        self.same_augmentation = same_augmentation
        self.num_workers = num_workers
        self.random_state = random_state
        self.device = device
        self.precision = precision
        self.checkpoint_dir = checkpoint_dir
        self.verbose = verbose

    def fit(self, X, y=None):
        """Pretrain on the MPCS sets of ``X``; labels are not used.

        Parameters
        ----------
        X : pandas.DataFrame
            Long layout (columns ``path``, ``magnification``, ``group``) or wide same-centre layout (one
            column per magnification, one row per centre); see the class docstring.
        y : None
            Ignored.

        Returns
        -------
        self
        """
        return super().fit(X, y)

    def _training_set(self, X) -> TrainingSet:
        if not isinstance(X, pd.DataFrame):
            raise TypeError(
                f"MPCSPretrainer.fit needs a DataFrame, got {type(X).__name__}: either one row per image with "
                f"columns {list(LONG_COLUMNS)}, or one row per tissue centre with one column per magnification"
            )
        if len(X) == 0:
            raise ValueError("X is empty: 0 rows")
        if "magnification" in X.columns:
            missing = [c for c in LONG_COLUMNS if c not in X.columns]
            if missing:
                raise ValueError(
                    f"X has a 'magnification' column, so it is read as one row per image, but lacks the columns "
                    f"{missing} (needed: {list(LONG_COLUMNS)}; got {list(X.columns)})"
                )
            for column in ("path", "magnification", "group"):
                bad = X[column].map(_is_missing)
                if bad.any():
                    raise ValueError(f"column {column!r} is empty in {int(bad.sum())} rows, e.g. row {X.index[bad][0]!r}")
            cells = X["path"].tolist()
            mags = [normalize_magnification(m) for m in X["magnification"]]
            groups = X["group"].tolist()
            self.layout_ = "long"
        else:
            if X.shape[1] < 2:
                raise ValueError(
                    f"X has no 'magnification' column, so it is read as one row per tissue centre with one column "
                    f"per magnification; it needs at least 2 such columns, got {list(X.columns)}"
                )
            cells, mags, groups = [], [], []
            for row, values in enumerate(X.itertuples(index=False, name=None)):
                for column, cell in zip(X.columns, values, strict=True):
                    if not _is_missing(cell):
                        cells.append(cell)
                        mags.append(normalize_magnification(column))
                        groups.append(row)
            self.layout_ = "wide"
        fixed = [normalize_magnification(m) for m in self.fixed_pair]
        table = self.pair_table
        # Fail now, naming the problem, rather than at the first epoch.
        sample_pairs(mags, groups, self.pair_strategy, fixed_pair=fixed, pair_table=table, rng=0)
        self.magnifications_ = sorted(set(mags), key=_magnification_order)
        self.n_groups_ = len(set(groups))

        def draw(rng: np.random.Generator) -> np.ndarray:
            return sample_pairs(mags, groups, self.pair_strategy, fixed_pair=fixed, pair_table=table, rng=rng)

        return TrainingSet(
            cells=cells,
            draw=draw,
            identity={"layout": self.layout_, "magnifications": mags, "groups": [str(g) for g in groups]},
        )

    def _pair_views(self, x1, x2, augment):
        if self.same_augmentation and hasattr(augment, "forward_parameters"):
            params = augment.forward_parameters(x1.shape)
            return augment(x1, params=params), augment(x2, params=params)
        return augment(x1), augment(x2)


def _magnification_order(name: str):
    number = name[:-1] if name.endswith("X") else None
    try:
        return (0, float(number), name) if number is not None else (1, 0.0, name)
    except ValueError:
        return (1, 0.0, name)


