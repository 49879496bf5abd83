"""FocalHeadClassifier: the scikit-learn estimator that trains an :class:`MLPHead` on embeddings."""

from __future__ import annotations

import contextlib
import copy
import functools
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import (
    _check_sample_weight,
    check_consistent_length,
    check_is_fitted,
    check_random_state,
    check_X_y,
    column_or_1d,
    validate_data,
)
from skorch.callbacks import EarlyStopping
from skorch.helper import predefined_split
from torch.func import functional_call

from skdfl._device import resolve_device

from ._data import BatchIterator, EmbeddingDataset, FeatureMoments, validation_split
from ._loss import FocalLoss
from ._module import MLPHead, as_hidden_units
from ._net import HeadNet

__all__ = ["FocalHeadClassifier"]

# Batches at inference and validation are bounded by memory, not by the optimisation.
_MIN_INFERENCE_BATCH = 1024
_NOISE_SCALES = ("feature", "global", "absolute")


def _softmax(logits):
    # float64 so probabilities sum to 1 to ~1e-15, not the ~1e-7 of float32.
    return torch.softmax(logits.detach().cpu().double(), dim=1)


@functools.cache
def _fused_adam_supported(device_type):
    """Whether this torch has Adam's fused kernel for ``device_type`` (CPU: torch >= 2.4)."""
    try:
        torch.optim.Adam([torch.zeros(1, device=device_type, requires_grad=True)], fused=True)
    except (RuntimeError, ValueError, TypeError):
        return False
    return True


def _is_bank(X):
    """Whether ``X`` has the 3-D augmentation-bank layout (arrays, tensors, nested lists)."""
    ndim = getattr(X, "ndim", None)
    if ndim is None and isinstance(X, (list, tuple)):
        ndim = np.ndim(X)
    return ndim == 3


@contextlib.contextmanager
def _intra_op_threads(n_threads):
    """Run the block with ``n_threads`` torch intra-op threads (None: unchanged), restoring the setting."""
    previous = torch.get_num_threads()
    if n_threads is None or n_threads == previous:
        yield
        return
    torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def _seeded(seed, device):
    """Seed torch inside the block, restoring the caller's global RNG state afterwards."""
    if seed is None:
        yield
        return
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
        device_type = "cuda"
    else:
        devices, device_type = [], None
    with torch.random.fork_rng(devices=devices, device_type=device_type):
        torch.manual_seed(seed)
        yield


class FocalHeadClassifier(ClassifierMixin, BaseEstimator):
    """MLP classifier trained with focal loss on (frozen-backbone) embeddings.

    This is the head of the DFL pipeline: put it after :class:`skdfl.BackboneEmbedder` (and optionally
    ``StandardScaler``/``PCA``). Inputs are fixed-length feature vectors; the network is :class:`MLPHead`,
    trained with :class:`FocalLoss` and Adam on embeddings perturbed in feature space (noise, feature dropout,
    mixup), until the training loss stops improving.

    Design: a small scikit-learn estimator that *composes* a skorch ``NeuralNetClassifier``, built in
    :meth:`fit` and stored as ``net_``. Subclassing the skorch net directly breaks nearly all of
    ``check_estimator`` (its ``__init__`` takes module classes and ``module__*`` routing, so ``clone`` and
    ``get_params`` do not round-trip, and input width and class count cannot be inferred at fit). Here
    ``__init__`` holds only plain hyper-parameters, validation follows scikit-learn, and skorch owns the
    training loop, callbacks, device handling and serialisation of the torch state. Batches come from a
    tensor held on the device (no ``DataLoader``), which is what makes a fit take a fraction of a second.

    Parameters
    ----------
    hidden_units : int or sequence of int, default=()
        Hidden layer widths. ``()`` is a single dense softmax layer (a multinomial logistic regression, used in
        the paper to compare backbones); ``(512,)`` is the paper's one-hidden-layer task head. The linear head
        is the default because it scored at least as well on new patients (see Notes) and trains faster.

    dropout : float, default=0.0
        Dropout probability after each hidden layer.

    noise_std : float, default=1.0
        Level of the Gaussian noise added to the inputs during training only (the paper's feature-space
        augmentation); never applied by ``predict``/``predict_proba``. Its unit is set by ``noise_scale``: by
        default, one standard deviation of each feature.

    noise_scale : {"feature", "global", "absolute"}, default="feature"
        Unit of ``noise_std``. ``"feature"``: each feature's standard deviation on the training data, so
        ``noise_std=0.3`` perturbs every feature by 30 % of its spread, with or without ``StandardScaler``.
        ``"global"``: one scale for all features, the root mean square of their standard deviations
        (isotropic noise of the same total power). ``"absolute"``: the units of the input.

    feature_dropout : float, default=0.0
        Probability of replacing each input feature by its training mean during training (see
        :class:`FeatureDropout`).

    mixup_alpha : float, default=0.0
        Embedding mixup during training: each sample of a batch is mixed with a random partner with weight
        ``lam ~ Beta(mixup_alpha, mixup_alpha)``, and the loss mixes the two labels' losses with the same
        weight. 0 disables mixup.

    bank_size : int, default=None
        Read a 2-D ``X`` of shape ``(n_samples, bank_size * d)`` as an augmentation bank of ``bank_size``
        augmentation-major blocks of ``d`` features, the layout of ``BackboneEmbedder(augmentations=...)``
        (block 0 is the un-augmented image). Training draws one block per sample each time the sample enters a
        batch; ``predict`` and the other inference methods use block 0, or the mean of the blocks with
        ``test_time_augmentation=True``. Keeping the bank 2-D lets a ``StandardScaler`` or any other 2-D step sit
        between the embedder and the head in a Pipeline. None: ``X`` is one embedding per sample (or an
        explicit 3-D bank, see Notes).

    test_time_augmentation : bool, default=False
        With ``bank_size``, predict from the mean of the ``bank_size`` blocks instead of block 0 (e.g. the 8
        flips/rotations of ``augmentations="dihedral"``). It acts at inference only, so it can be switched with
        ``set_params`` on a fitted head.

    gamma : float, default=0.0
        Focal loss focusing parameter; 0 is cross-entropy, 2.0 the paper's (and Lin et al.'s) focal loss, which
        down-weights well-classified samples. With the default noise and weight decay, 2.0 scored no better on
        new patients (see Notes); it remains the choice to try on strongly imbalanced data.

    alpha : {"balanced"}, dict, array-like of shape (n_classes,) or None, default=None
        Per-class focal-loss weights. ``None`` weights classes equally. ``"balanced"`` uses inverse class
        frequency (counting ``sample_weight``), ``n_samples / (n_classes * np.bincount(y))`` as in
        :func:`~sklearn.utils.class_weight.compute_class_weight`; this normalisation makes the average weight
        over training samples 1, so the loss scale (and the meaning of ``lr``/``weight_decay``) matches
        ``alpha=None``. A dict maps class labels to weights (missing labels get 1). An array gives one weight
        per class in the order of ``classes_`` (i.e. sorted labels).

    lr : float, default=2e-3
        Adam learning rate.

    weight_decay : float, default=0.1
        L2 penalty passed to :class:`torch.optim.Adam`. The default is strong, like the ``C=1e-3`` a
        patient-grouped search picks for a logistic regression on these embeddings; with hidden layers, values
        of 1e-3 to 1e-2 are more usual.

    batch_size : int, default=256
        Mini-batch size for training. With the default ``lr``, 256 scored as well on new patients as 128 with
        ``lr=1e-3`` in half the optimiser steps; a linear head's fit time is its number of steps (see Notes).

    max_epochs : int, default=200
        Upper bound on the number of epochs. Training normally stops earlier, when the training loss (or, with
        ``early_stopping``, the validation loss) has not improved by ``tol`` for ``n_iter_no_change`` epochs;
        reaching ``max_epochs`` before that raises a :class:`~sklearn.exceptions.ConvergenceWarning`.

    min_steps_per_epoch : int, default=10
        Optimiser steps an epoch makes at least. With fewer than ``min_steps_per_epoch * batch_size`` training
        samples, an epoch passes over the (reshuffled) data several times. One pass over a small data set is a
        single step, so counting passes would leave a small-data head under-trained and its convergence test
        looking at single noisy batches. 1 makes an epoch exactly one pass.

    tol : float, default=1e-3
        Minimum decrease of the monitored loss (mean focal loss over an epoch) below the best loss so far that
        counts as an improvement, as in scikit-learn's MLP.

    n_iter_no_change : int, default=5
        Epochs without an improvement of at least ``tol`` after which training stops (the patience of early
        stopping).

    early_stopping : bool, default=False
        If True, hold out ``validation_fraction`` of the training data, monitor the validation loss instead
        of the training loss, and restore the weights of the best epoch. The split is stratified, and when
        ``groups`` are passed to :meth:`fit` it holds out whole groups (e.g. patients), so that no group is
        on both sides.

    validation_fraction : float, default=0.1
        Proportion of training data held out when ``early_stopping=True``.

    device : str or torch.device, default="auto"
        Torch device; ``"auto"`` picks CUDA, then MPS, then CPU. Resolved at fit time.

    n_threads : int or None, default=1
        Torch intra-op threads used while fitting and predicting (the global setting is restored after).
        A head's operations are small: on a 2-core machine shared with other jobs, 2 threads made each
        optimiser step about 10x slower than 1 (threads wait for each other), and on an idle machine they
        gain less than 2x. To use more cores, run several fits in parallel (e.g. ``n_jobs`` of a search).
        None keeps torch's current setting.

    random_state : int, RandomState instance or None, default=None
        Seeds weight initialisation, shuffling, augmentation draws, dropout, noise and the validation split.
        The caller's global torch RNG state is restored after fitting. With an int, fitting on CPU is
        reproducible (GPU kernels may still be non-deterministic). ``None`` leaves torch unseeded.

    verbose : int, default=0
        0 is silent; > 0 prints skorch's per-epoch table.

    callbacks : list of skorch callbacks or (name, callback) tuples, default=None
        Extra skorch callbacks, deep-copied at fit so the estimator parameter is never mutated.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels.

    n_features_in_ : int
        Number of features seen during fit (columns of ``X``, i.e. ``bank_size * d`` with ``bank_size``; the
        last dimension of a 3-D bank).

    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during fit. Defined only when ``X`` has string column names.

    feature_mean_, feature_std_ : ndarray of shape (n_features_in_,)
        Weighted mean and standard deviation of each feature on the training data (accumulated over
        :meth:`partial_fit` calls); the units of ``noise_scale`` and the value of a dropped feature.

    net_ : skorch.NeuralNetClassifier
        The trained skorch net; ``net_.module_`` is the :class:`MLPHead`. It expects float32 features and
        encoded targets ``0..n_classes-1``; its criterion returns per-sample losses.

    history_ : skorch.History
        Per-epoch training log (``train_loss``, and ``valid_loss``/``valid_acc`` with early stopping).

    n_iter_ : int
        Number of epochs run.

    See Also
    --------
    FocalLoss : The training criterion.
    MLPHead : The torch module being trained.

    Notes
    -----
    The defaults were chosen on patients the head never saw: ``benchmarks/bench_defaults.py`` scores
    configurations by patient-grouped cross-validation on DenseNet-121 embeddings of breast IDC (27 patients)
    and BreakHis, against a logistic regression whose ``C`` is tuned by inner grouped CV. The linear head with
    noise of one feature standard deviation and weight decay 0.1 was at least as good as that logistic
    regression on both, and as good as or better than the 512-unit head; training past about ten epochs did not
    help, hence the short convergence test (``tol=1e-3``, ``n_iter_no_change=5``). The training budget was then
    halved in steps (``batch_size=256``, ``lr=2e-3``, ``min_steps_per_epoch=10`` instead of 128, 1e-3 and 20;
    stage ``speed`` of the same benchmark): the same balanced accuracy within noise on IDC, BreakHis and CRC,
    and a default fit 1.3-1.7x faster. The README's benchmark section has the tables.

    An augmentation bank holds ``n_draws`` embeddings of each training sample (of augmented versions of its
    image). It comes either 2-D with ``bank_size=n_draws`` (the embedder's output, which fits in a Pipeline) or
    as an explicit 3-D array of shape ``(n_samples, n_draws, n_features)`` with ``bank_size=None``. Each time
    a sample enters a training batch, one of its draws is picked at random; the validation part of an
    early-stopping split and inference use draw 0, which should therefore be the un-augmented embedding (or,
    with ``bank_size`` and ``test_time_augmentation=True``, the mean of the draws). A 3-D bank is for training
    only: inference then takes ``(n_samples, n_features)``.

    Inputs are converted to float32 (the dtype of the network); float32 arrays, including ``np.memmap``,
    are used without copying and read one batch at a time.

    Examples
    --------
    >>> from sklearn.datasets import make_classification
    >>> from skdfl.heads import FocalHeadClassifier
    >>> X, y = make_classification(n_samples=200, n_features=8, random_state=0)
    >>> clf = FocalHeadClassifier(hidden_units=(16,), random_state=0).fit(X, y)
    >>> clf.predict_proba(X[:2]).shape
    (2, 2)
    """

    _parameter_constraints: dict = {
        "hidden_units": ["array-like", Interval(Integral, 1, None, closed="left")],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "noise_std": [Interval(Real, 0, None, closed="left")],
        "noise_scale": [StrOptions(set(_NOISE_SCALES))],
        "feature_dropout": [Interval(Real, 0, 1, closed="left")],
        "mixup_alpha": [Interval(Real, 0, None, closed="left")],
        "bank_size": [None, Interval(Integral, 1, None, closed="left")],
        "test_time_augmentation": ["boolean"],
        "gamma": [Interval(Real, 0, None, closed="left")],
        "alpha": [None, StrOptions({"balanced"}), dict, "array-like"],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "min_steps_per_epoch": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "device": [str, torch.device],
        "n_threads": [None, Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "callbacks": [None, list],
    }

    def __init__(
        self,
        *,
        hidden_units=(),
        dropout=0.0,
        noise_std=1.0,
        noise_scale="feature",
        feature_dropout=0.0,
        mixup_alpha=0.0,
        bank_size=None,
        test_time_augmentation=False,
        gamma=0.0,
        alpha=None,
        lr=2e-3,
        weight_decay=0.1,
        batch_size=256,
        max_epochs=200,
        min_steps_per_epoch=10,
        tol=1e-3,
        n_iter_no_change=5,
        early_stopping=False,
        validation_fraction=0.1,
        device="auto",
        n_threads=1,
        random_state=None,
        verbose=0,
        callbacks=None,
    ):
        self.hidden_units = hidden_units
        self.dropout = dropout
        self.noise_std = noise_std
        self.noise_scale = noise_scale
        self.feature_dropout = feature_dropout
        self.mixup_alpha = mixup_alpha
        self.bank_size = bank_size
        self.test_time_augmentation = test_time_augmentation
        self.gamma = gamma
        self.alpha = alpha
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.min_steps_per_epoch = min_steps_per_epoch
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.device = device
        self.n_threads = n_threads
        self.random_state = random_state
        self.verbose = verbose
        self.callbacks = callbacks

    # ------------------------------------------------------------------------------------ validation
    def _blocks(self, X):
        """View a validated 2-D ``X`` as ``(n_samples, bank_size, d)`` augmentation-major blocks."""
        n_blocks = int(self.bank_size)
        if X.shape[1] % n_blocks:
            raise ValueError(
                f"bank_size={n_blocks} reads X as {n_blocks} blocks of equal width (one per augmentation), but X "
                f"has {X.shape[1]} columns, not a multiple of {n_blocks}; pass the full output of the embedder "
                "with augmentations, or the right bank_size"
            )
        return X.reshape(X.shape[0], n_blocks, X.shape[1] // n_blocks)

    def _refuse_3d_with_bank_size(self, X):
        if self.bank_size is not None and _is_bank(X):
            raise ValueError(
                f"bank_size={self.bank_size} expects a 2-D X of shape (n_samples, bank_size * n_features); got "
                f"a 3-D X of shape {np.shape(X)}: pass it without bank_size, or reshape it to 2-D"
            )

    def _validate_training_data(self, X, y, reset):
        """Validated float32 ``X`` (2-D, or a 3-D augmentation bank) and 1-D ``y``."""
        if self.test_time_augmentation and self.bank_size is None:
            raise ValueError(
                "test_time_augmentation=True averages the blocks of an augmentation bank at inference; set "
                "bank_size to the number of blocks (augmentations) in X"
            )
        self._refuse_3d_with_bank_size(X)
        if self.bank_size is not None:
            X, y = validate_data(self, X, y, reset=reset, dtype=np.float32)
            return self._blocks(X), y
        if not _is_bank(X):
            return validate_data(self, X, y, reset=reset, dtype=np.float32)
        X, y = check_X_y(X, y, allow_nd=True, dtype=np.float32)
        n_features = X.shape[2]
        if reset:
            self.n_features_in_ = n_features
            if hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
        elif n_features != self.n_features_in_:
            raise ValueError(
                f"X has {n_features} features, but {type(self).__name__} is expecting {self.n_features_in_} "
                "features as input"
            )
        return X, y

    def _validate_inference_data(self, X):
        """Validated float32 ``(n_samples, d)`` inputs of the network: with ``bank_size``, block 0 or the mean."""
        self._refuse_3d_with_bank_size(X)
        if _is_bank(X):
            raise ValueError(
                f"{type(self).__name__} predicts from X of shape (n_samples, n_features); the augmentation "
                f"bank layout (n_samples, n_draws, n_features), got {np.shape(X)}, is for training only "
                "(bank_size reads a 2-D bank, and test_time_augmentation averages it at inference)"
            )
        X = validate_data(self, X, reset=False, dtype=np.float32)
        if self.bank_size is None:
            return X
        blocks = self._blocks(X)
        return blocks.mean(axis=1, dtype=np.float32) if self.test_time_augmentation else blocks[:, 0]

    def _validate_sample_weight(self, sample_weight, X):
        if sample_weight is None:
            return None
        sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64, ensure_non_negative=True)
        if not sample_weight.any():
            raise ValueError("sample_weight must contain at least one non-zero weight; all weights are 0")
        return sample_weight

    def _class_weights(self, y_encoded, sample_weight):
        """Resolve ``alpha`` to one weight per class (ordered as ``classes_``), or None."""
        alpha = self.alpha
        if alpha is None:
            return None
        n_classes = len(self.classes_)
        if isinstance(alpha, (str, dict)):
            return compute_class_weight(
                alpha, classes=self.classes_, y=self.classes_[y_encoded], sample_weight=sample_weight
            )
        weights = np.asarray(alpha, dtype=np.float64)
        if weights.ndim != 1 or weights.shape[0] != n_classes:
            raise ValueError(
                f"alpha must have one entry per class: got shape {weights.shape} for {n_classes} classes "
                f"{self.classes_.tolist()}"
            )
        if not np.all(np.isfinite(weights)) or np.any(weights < 0):
            raise ValueError(f"alpha must contain finite, non-negative weights, got {weights.tolist()}")
        return weights

    def _resolve_device(self):
        try:
            return resolve_device(self.device)
        except RuntimeError as exc:
            raise ValueError(f"invalid device {self.device!r}: {exc}") from exc

    def _draw_seed(self):
        # One int seed drives torch and the validation split. Going through check_random_state means a
        # RandomState instance is advanced by each fit (successive fits differ), as in sklearn estimators.
        if self.random_state is None:
            return None
        return int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))

    # ----------------------------------------------------------------------------------- the net
    def _augmentation_statistics(self):
        """``(noise scale, dropped-feature value)`` from the training moments, as module arguments."""
        self.feature_mean_ = self._moments.mean_.astype(np.float32)
        self.feature_std_ = self._moments.std_.astype(np.float32)
        if self.noise_scale == "feature":
            scale = self.feature_std_
        elif self.noise_scale == "global":
            scale = np.float32(np.sqrt(np.mean(self.feature_std_.astype(np.float64) ** 2)))
        else:
            scale = None
        return scale, self.feature_mean_

    def _build_net(self, n_features, alpha, device, callbacks, train_split):
        noise_scale, feature_center = self._augmentation_statistics()
        return HeadNet(
            module=MLPHead,
            module__n_features=n_features,
            module__n_classes=len(self.classes_),
            module__hidden_units=as_hidden_units(self.hidden_units),
            module__dropout=float(self.dropout),
            module__noise_std=float(self.noise_std),
            module__noise_scale=noise_scale,
            module__feature_dropout=float(self.feature_dropout),
            module__feature_center=feature_center,
            criterion=FocalLoss,
            criterion__gamma=float(self.gamma),
            criterion__alpha=None if alpha is None else alpha.tolist(),
            criterion__reduction="none",
            optimizer=torch.optim.Adam,
            optimizer__weight_decay=float(self.weight_decay),
            # One kernel for the whole update instead of a dozen small ops per parameter: on a small head the
            # optimiser step is a large share of the time (measured 2x faster per step on CPU).
            optimizer__fused=_fused_adam_supported(torch.device(device).type) or None,
            lr=float(self.lr),
            max_epochs=int(self.max_epochs),
            batch_size=int(self.batch_size),
            classes=list(range(len(self.classes_))),
            train_split=train_split,
            callbacks=callbacks,
            dataset=EmbeddingDataset,
            iterator_train=BatchIterator,
            iterator_train__shuffle=True,
            iterator_train__min_steps=int(self.min_steps_per_epoch),
            iterator_train__mixup_alpha=float(self.mixup_alpha),
            iterator_valid=BatchIterator,
            iterator_valid__batch_size=max(int(self.batch_size), _MIN_INFERENCE_BATCH),
            # skorch's "auto" only knows torch's own losses; this makes ``net_.predict_proba`` a softmax.
            predict_nonlinearity=_softmax,
            device=device,
            verbose=int(self.verbose),
        )

    _STOPPERS = frozenset({"early_stopping", "convergence"})

    def _stopper(self):
        """The callback that ends training: validation-loss early stopping, or training-loss convergence."""
        common = dict(patience=int(self.n_iter_no_change), threshold=float(self.tol), threshold_mode="abs")
        if self.early_stopping:
            return "early_stopping", EarlyStopping(monitor="valid_loss", load_best=True, **common)
        return "convergence", EarlyStopping(monitor="train_loss", load_best=False, **common)

    def _store_fitted(self, net):
        self.net_ = net
        self.history_ = net.history
        self.n_iter_ = len(net.history)

    # ------------------------------------------------------------------------------------------ fit
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None, groups=None):
        """Train the head.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, n_draws, n_features)
            Training embeddings, or an augmentation bank (see Notes). float32 arrays (including
            ``np.memmap``) are used without a copy.

        y : array-like of shape (n_samples,)
            Class labels of any type (ints, strings, ...).

        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative per-sample weights of the loss; an integer weight acts like repeating the sample.
            Route it through meta-estimators with ``set_fit_request(sample_weight=True)``.

        groups : array-like of shape (n_samples,), default=None
            Group labels (e.g. patient ids), used only by ``early_stopping`` to hold out whole groups. Route
            it with ``set_fit_request(groups=True)``.

        Returns
        -------
        self : FocalHeadClassifier
            Fitted estimator.
        """
        X, y = self._validate_training_data(X, y, reset=True)
        check_classification_targets(y)
        self.classes_, y_encoded = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(
                "FocalHeadClassifier needs samples of at least 2 classes, but the data contains only one "
                f"class: {self.classes_.tolist()[0]!r}"
            )
        sample_weight = self._validate_sample_weight(sample_weight, X)
        if groups is not None:
            groups = column_or_1d(groups, input_name="groups")
            check_consistent_length(X, groups)
        as_hidden_units(self.hidden_units)
        alpha = self._class_weights(y_encoded, sample_weight)
        device = self._resolve_device()
        seed = self._draw_seed()
        self._partial_fit_seed = seed

        train_rows = valid_rows = None
        if self.early_stopping:
            train_rows, valid_rows = validation_split(y_encoded, groups, self.validation_fraction, seed)
        self._moments = FeatureMoments().update(X, sample_weight, rows=train_rows)
        train_data = EmbeddingDataset(X, y_encoded, sample_weight, rows=train_rows, device=device)
        train_split = None
        if valid_rows is not None:
            train_split = predefined_split(
                EmbeddingDataset(X, y_encoded, sample_weight, rows=valid_rows, device=device)
            )
        stopper_name, stopper = self._stopper()
        callbacks = [*copy.deepcopy(list(self.callbacks or [])), (stopper_name, stopper)]
        net = self._build_net(X.shape[-1], alpha, device, callbacks, train_split)
        with _seeded(seed, device), _intra_op_threads(self.n_threads):
            net.fit(train_data, y=None)
        self._store_fitted(net)

        stopper = dict(net.callbacks_)[stopper_name]
        if stopper.misses_ < stopper.patience and self.n_iter_ >= self.max_epochs:
            warnings.warn(
                f"FocalHeadClassifier stopped at max_epochs={self.max_epochs} while the {stopper.monitor} was "
                f"still decreasing (it improved by more than tol={self.tol} within the last "
                f"n_iter_no_change={self.n_iter_no_change} epochs): the head may be under-trained. Increase "
                "max_epochs (or lr).",
                ConvergenceWarning,
                stacklevel=3,
            )
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """Train the head for one pass over ``(X, y)``, continuing from the previous call.

        Use it to train on data that does not fit in memory, chunk by chunk (e.g. slices of a memory-mapped
        store), calling it again for more epochs. Weights and the optimiser's state carry over between calls;
        ``early_stopping``, the convergence test and ``min_steps_per_epoch`` do not apply (a call is exactly one
        pass, as in scikit-learn). Feature statistics (for ``noise_scale`` and ``feature_dropout``)
        accumulate over the chunks seen so far.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, n_draws, n_features)
            A chunk of training embeddings.

        y : array-like of shape (n_samples,)
            Its labels.

        classes : array-like of shape (n_classes,), default=None
            All the classes. Required on the first call, since a chunk may lack some; ignored afterwards
            (it must then match ``classes_``).

        sample_weight : array-like of shape (n_samples,), default=None
            Per-sample weights of the loss.

        Returns
        -------
        self : FocalHeadClassifier
            Fitted estimator.
        """
        first_call = not hasattr(self, "net_")
        if first_call and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit")
        X, y = self._validate_training_data(X, y, reset=first_call)
        check_classification_targets(y)
        if first_call:
            classes = np.unique(column_or_1d(classes, input_name="classes"))
            if len(classes) < 2:
                raise ValueError(
                    f"FocalHeadClassifier needs at least 2 classes, got classes={classes.tolist()}"
                )
            self.classes_ = classes
        elif classes is not None and not np.array_equal(np.unique(classes), self.classes_):
            raise ValueError(
                f"classes={np.unique(classes).tolist()} differs from the classes of the first call to "
                f"partial_fit, {self.classes_.tolist()}"
            )
        unknown = np.setdiff1d(y, self.classes_)
        if unknown.size:
            raise ValueError(f"y contains labels {unknown.tolist()} not in classes {self.classes_.tolist()}")
        y_encoded = np.searchsorted(self.classes_, y)
        sample_weight = self._validate_sample_weight(sample_weight, X)
        device = self._resolve_device()

        if first_call:
            self._partial_fit_seed = self._draw_seed()
            self._moments = FeatureMoments()
        self._moments.update(X, sample_weight)
        if first_call:
            # Class weights come from the first chunk's frequencies: the later chunks are not known yet.
            alpha = self._class_weights(y_encoded, sample_weight)
            net = self._build_net(X.shape[-1], alpha, device, copy.deepcopy(list(self.callbacks or [])), None)
            with _seeded(self._partial_fit_seed, device), _intra_op_threads(self.n_threads):
                net.initialize()
        else:
            net = self.net_
            if net.train_split is not None or self._STOPPERS & {name for name, _ in net.callbacks_}:
                # Continuing after fit: one plain epoch per call, without fit's validation split and stopper.
                net.set_params(train_split=None, callbacks=copy.deepcopy(list(self.callbacks or [])))
                net.initialize_callbacks()  # skorch's set_params initialises them before storing the new list
            noise_scale, feature_center = self._augmentation_statistics()
            module = net.module_
            with torch.no_grad():
                if module.noise.scale is not None:
                    module.noise.scale.copy_(torch.as_tensor(noise_scale))
                module.feature_dropout.center.copy_(torch.as_tensor(feature_center))

        # One pass per call; set directly, since skorch's set_params re-initialises on iterator parameters.
        net.iterator_train__min_steps = 1
        data = EmbeddingDataset(X, y_encoded, sample_weight, device=device)
        seed = None if self._partial_fit_seed is None else self._partial_fit_seed + len(net.history)
        with _seeded(seed, device), _intra_op_threads(self.n_threads):
            net.partial_fit(data, y=None, epochs=1)
        self._store_fitted(net)
        return self

    # ------------------------------------------------------------------------------------ inference
    def _logits(self, X):
        """float64 logits of the module in eval mode, batch by batch.

        On CPU the forward pass runs in float64, so that a sample's scores do not depend on which other
        samples share its batch (float32 matrix products round differently for different batch sizes).
        """
        X = self._validate_inference_data(X)
        device = torch.device(self.net_.device)
        module = self.net_.module_
        dtype = torch.float64 if device.type == "cpu" else torch.float32
        # The module runs with float64 copies of its weights (hooks and all), leaving the fitted module as is.
        state = {
            name: tensor.to(dtype) if tensor.is_floating_point() else tensor
            for name, tensor in [*module.named_parameters(), *module.named_buffers()]
        }
        training = module.training
        module.eval()
        batch_size = max(int(self.batch_size), _MIN_INFERENCE_BATCH)
        batches = BatchIterator(EmbeddingDataset(X, device=device), batch_size)
        try:
            with torch.no_grad(), _intra_op_threads(self.n_threads):
                logits = [
                    functional_call(module, state, (inputs.to(dtype),)).cpu().double()
                    for inputs, _ in batches
                ]
        finally:
            module.train(training)
        return torch.cat(logits)

    def decision_function(self, X):
        """Logits of the head (noise, dropout and mixup are off).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings.

        Returns
        -------
        scores : ndarray of shape (n_samples,) or (n_samples, n_classes)
            The logits, columns ordered as ``classes_``. With two classes, as in scikit-learn, the 1-D log-odds
            of ``classes_[1]`` (logit of class 1 minus logit of class 0): positive means ``classes_[1]``.
        """
        check_is_fitted(self)
        logits = self._logits(X).numpy()
        if logits.shape[1] == 2:
            return logits[:, 1] - logits[:, 0]
        return logits

    def predict_log_proba(self, X):
        """Log of the class probabilities, computed stably from the logits.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings.

        Returns
        -------
        log_proba : ndarray of shape (n_samples, n_classes)
            Log-probabilities, columns ordered as ``classes_``.
        """
        check_is_fitted(self)
        # float64 log-softmax on CPU: accurate, and float64 is unsupported on some accelerators.
        return torch.log_softmax(self._logits(X), dim=1).numpy()

    def predict_proba(self, X):
        """Class probabilities (softmax of the logits; noise, dropout and mixup are off).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            float64 probabilities whose rows sum to 1, columns ordered as ``classes_``.
        """
        check_is_fitted(self)
        return np.exp(self.predict_log_proba(X))

    def predict(self, X):
        """Predict class labels.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            Labels from ``classes_`` (original label type).
        """
        check_is_fitted(self)
        return self.classes_[np.argmax(self._logits(X).numpy(), axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # Seeded CPU training is bit-reproducible; CUDA/MPS kernels (e.g. atomic adds in backward) are not.
        try:
            tags.non_deterministic = self._resolve_device().type != "cpu"
        except (TypeError, ValueError):  # an invalid device is reported by fit, not by tag inspection
            tags.non_deterministic = False
        return tags
