"""Trainable heads on top of frozen embeddings: focal loss, feature-space noise, an MLP and its estimator.

:class:`FocalHeadClassifier` is the scikit-learn classifier that sits at the end of a pipeline after
:class:`skdfl.BackboneEmbedder`. The torch building blocks (:class:`FocalLoss`, :class:`GaussianNoise`,
:class:`MLPHead`) are public so they can be reused in plain torch or skorch code.
"""

from __future__ import annotations

import contextlib
import copy
from numbers import Integral, Real

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, check_random_state, validate_data
from skorch import NeuralNetClassifier
from skorch.callbacks import EarlyStopping
from skorch.dataset import ValidSplit
from torch import nn

from skdfl._device import resolve_device

__all__ = ["FocalHeadClassifier", "FocalLoss", "GaussianNoise", "MLPHead"]

_REDUCTIONS = ("mean", "sum", "none")


class FocalLoss(nn.Module):
    r"""Multiclass focal loss on logits (Lin et al., 2017).

    For a sample with true class :math:`t` and predicted probability :math:`p_t`,

    .. math:: \mathrm{FL}(p_t) = -\alpha_t \, (1 - p_t)^{\gamma} \, \log p_t .

    With ``gamma=0`` and ``alpha=None`` this is exactly
    :func:`torch.nn.functional.cross_entropy`. ``gamma > 0`` shrinks the loss of well-classified samples
    (``p_t`` close to 1) so training concentrates on hard, often minority-class, samples.

    Parameters
    ----------
    gamma : float, default=2.0
        Focusing parameter, ``>= 0``. 2.0 is the value recommended by Lin et al.

    alpha : sequence of float, torch.Tensor or None, default=None
        Per-class weight :math:`\alpha_c`, one non-negative entry per class (indexed by the integer target).
        ``None`` weights all classes by 1. Stored as a buffer, so it follows ``.to(device)`` and is saved in
        the ``state_dict``; a floating tensor keeps its dtype, other inputs become the default dtype.

    reduction : {"mean", "sum", "none"}, default="mean"
        ``"mean"`` averages the per-sample losses over the batch. Unlike
        ``cross_entropy(weight=alpha)``, it does **not** divide by the sum of the selected weights, which
        is the usual focal-loss convention: ``alpha`` rescales samples, it is not a weighted average.

    Examples
    --------
    >>> import torch
    >>> from skdfl.heads import FocalLoss
    >>> logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    >>> target = torch.tensor([0, 1])
    >>> loss = FocalLoss(gamma=0.0)(logits, target)
    >>> bool(torch.isclose(loss, torch.nn.functional.cross_entropy(logits, target)))
    True
    """

    def __init__(self, gamma=2.0, alpha=None, reduction="mean"):
        super().__init__()
        if not gamma >= 0:
            raise ValueError(f"gamma must be >= 0, got {gamma!r}")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.gamma = float(gamma)
        self.reduction = reduction
        if alpha is not None:
            # A floating tensor keeps its dtype; anything else becomes the default dtype (float32), which
            # every device supports (MPS has no float64).
            is_float_tensor = isinstance(alpha, torch.Tensor) and alpha.is_floating_point()
            dtype = alpha.dtype if is_float_tensor else torch.get_default_dtype()
            alpha = torch.as_tensor(alpha, dtype=dtype).detach().clone()
            if alpha.ndim != 1:
                raise ValueError(
                    f"alpha must be one-dimensional (one weight per class), got shape {tuple(alpha.shape)}"
                )
            if not bool(torch.isfinite(alpha).all()) or bool((alpha < 0).any()):
                raise ValueError("alpha must contain finite, non-negative weights")
        self.register_buffer("alpha", alpha)

    def forward(self, logits, target):
        """Compute the focal loss.

        Parameters
        ----------
        logits : torch.Tensor of shape (n_samples, n_classes)
            Unnormalised scores.

        target : torch.Tensor of shape (n_samples,)
            Integer class indices in ``[0, n_classes)``.

        Returns
        -------
        loss : torch.Tensor
            A scalar for ``reduction="mean"``/``"sum"``, shape ``(n_samples,)`` for ``"none"``.
        """
        if logits.ndim != 2:
            raise ValueError(f"logits must have shape (n_samples, n_classes), got {tuple(logits.shape)}")
        target = target.long()
        log_pt = F.log_softmax(logits, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
        loss = -log_pt
        # gamma == 0 skips the modulating factor: the loss is then plain cross-entropy, with no pow in the graph.
        if self.gamma != 0:
            # expm1 keeps 1 - p_t accurate when p_t is close to 1 (the easy samples focal loss is about);
            # the clamp avoids 0 ** gamma, whose gradient is inf * 0 = nan for gamma < 1.
            one_minus_pt = (-torch.expm1(log_pt)).clamp_min(torch.finfo(log_pt.dtype).tiny)
            loss = loss * one_minus_pt.pow(self.gamma)
        if self.alpha is not None:
            if self.alpha.shape[0] != logits.shape[1]:
                raise ValueError(
                    f"alpha has {self.alpha.shape[0]} entries but logits have {logits.shape[1]} classes"
                )
            loss = loss * self.alpha.to(loss.dtype)[target]
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss

    def extra_repr(self):
        return f"gamma={self.gamma}, reduction={self.reduction!r}"


class GaussianNoise(nn.Module):
    """Add ``N(0, std**2)`` noise to the input in training mode only.

    This is the feature-space augmentation of the DFL paper: embeddings of a frozen backbone cannot be
    augmented in image space cheaply, so the head sees jittered embeddings instead. In eval mode, and
    whenever ``std == 0``, the module is the identity.

    Parameters
    ----------
    std : float, default=0.0
        Standard deviation of the additive noise, in the units of the input (use standardised features
        to make it comparable across backbones).
    """

    def __init__(self, std=0.0):
        super().__init__()
        if not std >= 0:
            raise ValueError(f"std must be >= 0, got {std!r}")
        self.std = float(std)

    def forward(self, x):
        """Return ``x`` plus noise in training mode, ``x`` itself otherwise.

        Parameters
        ----------
        x : torch.Tensor
            Input features.

        Returns
        -------
        out : torch.Tensor
            Tensor of the same shape as ``x``.
        """
        if not self.training or self.std == 0:
            return x
        return x + torch.randn_like(x) * self.std

    def extra_repr(self):
        return f"std={self.std}"


def _check_hidden_units(hidden_units):
    """Normalise ``hidden_units`` to a tuple of positive ints (an int means one hidden layer)."""
    if isinstance(hidden_units, Integral) and not isinstance(hidden_units, bool):
        hidden_units = (hidden_units,)
    try:
        units = tuple(hidden_units)
    except TypeError:
        units = None
    if units is None or not all(isinstance(u, Integral) and not isinstance(u, bool) and u > 0 for u in units):
        raise ValueError(f"hidden_units must be a sequence of positive integers, got {hidden_units!r}")
    return tuple(int(u) for u in units)


class MLPHead(nn.Module):
    """Feed-forward head: ``GaussianNoise -> [Linear -> ReLU -> Dropout] * len(hidden_units) -> Linear``.

    Parameters
    ----------
    n_features : int
        Input (embedding) width.

    n_classes : int
        Number of output logits.

    hidden_units : sequence of int, default=(512,)
        Width of each hidden layer. ``()`` gives the paper's single dense softmax layer (a multinomial
        logistic regression, used to compare backbones); ``(512,)`` is the paper's task head.

    dropout : float, default=0.0
        Dropout probability after each hidden ReLU. No dropout layer is created when 0.

    noise_std : float, default=0.0
        Standard deviation of the :class:`GaussianNoise` applied to the input during training.

    Attributes
    ----------
    noise : GaussianNoise
        Input augmentation (identity in eval mode).

    hidden : torch.nn.Sequential
        Hidden layers; empty when ``hidden_units=()``. Its output is the head's penultimate representation.

    output : torch.nn.Linear
        Final projection to logits.
    """

    def __init__(self, n_features, n_classes, hidden_units=(512,), dropout=0.0, noise_std=0.0):
        super().__init__()
        hidden_units = _check_hidden_units(hidden_units)
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.noise = GaussianNoise(noise_std)
        layers = []
        in_features = n_features
        for units in hidden_units:
            layers += [nn.Linear(in_features, units), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            in_features = units
        self.hidden = nn.Sequential(*layers)
        self.output = nn.Linear(in_features, n_classes)

    def forward(self, x):
        """Compute logits.

        Parameters
        ----------
        x : torch.Tensor of shape (n_samples, n_features)
            Embeddings.

        Returns
        -------
        logits : torch.Tensor of shape (n_samples, n_classes)
            Unnormalised class scores (train with :class:`FocalLoss`, apply softmax for probabilities).
        """
        return self.output(self.hidden(self.noise(x)))


class _ArrayDataset(torch.utils.data.Dataset):
    """Rows of a 2D array (possibly a ``np.memmap``) served a whole batch at a time.

    skorch's default dataset fetches one row per ``__getitem__`` and collates them, which costs one
    Python call per sample and yields views of read-only inputs (torch warns on those). Implementing
    ``__getitems__`` lets the DataLoader fetch a batch with one fancy-indexing read: only the batch is
    copied, so a memory-mapped store is consumed batch by batch. ``X`` and ``y`` are exposed under these
    names because skorch's scoring callbacks read them (``skorch.utils.data_from_dataset``).
    """

    def __init__(self, X, y=None):
        if not isinstance(X, np.ndarray):  # e.g. a DataFrame passed to ``net_`` directly
            X = np.asarray(X, dtype=np.float32)
        self.X = X
        self.y = None if y is None else np.asarray(y, dtype=np.int64)

    def __len__(self):
        return len(self.X)

    def __getitem__(self, index):
        Xi, yi = self.__getitems__([index])
        return Xi[0], yi[0]

    def __getitems__(self, indices):
        idx = np.asarray(indices, dtype=np.intp)
        Xb = torch.from_numpy(np.asarray(self.X[idx], dtype=np.float32))
        # skorch's batches are always (X, y); y is ignored at inference.
        yb = torch.zeros(len(idx), dtype=torch.int64) if self.y is None else torch.from_numpy(self.y[idx])
        return Xb, yb


def _collate_batch(batch):
    # ``_ArrayDataset.__getitems__`` already returns collated tensors.
    return batch


def _softmax(logits):
    # float64 so probabilities sum to 1 to ~1e-15, not the ~1e-7 of float32.
    return torch.softmax(logits.detach().cpu().double(), dim=1)


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
    ``StandardScaler``/``PCA``). Inputs are fixed-length feature vectors; the network is
    :class:`MLPHead` trained with :class:`FocalLoss` and Adam.

    Design: this is a small scikit-learn estimator that *composes* a skorch
    :class:`~skorch.NeuralNetClassifier`, built in :meth:`fit` and stored as ``net_``. Subclassing
    ``NeuralNetClassifier`` directly breaks nearly all of ``check_estimator``: its ``__init__`` takes the
    ``module``/``criterion`` classes and ``**kwargs`` routing (``module__*``), so ``clone`` and
    ``get_params`` do not round-trip, input width and class count cannot be inferred at fit, and it does
    no input validation. Here, ``__init__`` holds only plain hyper-parameters, validation follows
    scikit-learn conventions, and skorch owns the training loop, callbacks, device handling and
    serialisation of the torch state.

    Parameters
    ----------
    hidden_units : int or sequence of int, default=(512,)
        Hidden layer widths. ``(512,)`` is the paper's one-hidden-layer task head; ``()`` is a single dense
        softmax layer (multinomial logistic regression), used in the paper to compare backbones.

    dropout : float, default=0.0
        Dropout probability after each hidden layer.

    noise_std : float, default=0.0
        Standard deviation of Gaussian noise added to the inputs during training only (feature-space
        augmentation). Never applied by ``predict``/``predict_proba``. Meaningful on standardised
        embeddings, where values around 0.05-0.3 are typical; tune it by cross-validation.

    gamma : float, default=2.0
        Focal loss focusing parameter; 0 gives cross-entropy.

    alpha : {"balanced"}, dict, array-like of shape (n_classes,) or None, default=None
        Per-class focal-loss weights. ``None`` weights classes equally. ``"balanced"`` uses inverse class
        frequency, ``n_samples / (n_classes * np.bincount(y))`` as in
        :func:`~sklearn.utils.class_weight.compute_class_weight`; this normalisation makes the average
        weight over training samples 1, so the loss scale (and the meaning of ``lr``/``weight_decay``)
        matches ``alpha=None``. A dict maps class labels to weights (missing labels get 1). An array gives
        one weight per class in the order of ``classes_`` (i.e. sorted labels).

    lr : float, default=1e-3
        Adam learning rate. Adam's default, stable on standardised embeddings.

    weight_decay : float, default=0.0
        L2 penalty passed to :class:`torch.optim.Adam`.

    max_epochs : int, default=50
        Number of passes over the training data (upper bound with ``early_stopping``). With a few thousand
        samples and ``batch_size=128`` this is roughly 1000-2000 optimiser steps, enough for an MLP head to
        converge on linearly-separable-ish embeddings within seconds on a CPU.

    batch_size : int, default=128
        Mini-batch size for training and inference.

    early_stopping : bool, default=False
        If True, hold out a stratified ``validation_fraction`` of the training data and stop when the
        validation loss has not improved for ``patience`` epochs, restoring the best weights. Off by default
        so that small datasets train on all samples.

    validation_fraction : float, default=0.1
        Proportion of training data held out when ``early_stopping=True``.

    patience : int, default=5
        Epochs without validation-loss improvement before stopping.

    device : str or torch.device, default="auto"
        Torch device; ``"auto"`` picks CUDA, then MPS, then CPU. Resolved at fit time.

    random_state : int, RandomState instance or None, default=None
        Seeds weight initialisation, shuffling, dropout, noise and the validation split. The caller's
        global torch RNG state is restored after fitting. With an int, fitting on CPU is reproducible
        (GPU kernels may still be non-deterministic). ``None`` leaves torch unseeded.

    verbose : int, default=0
        0 is silent; > 0 prints skorch's per-epoch table.

    callbacks : list of skorch callbacks or (name, callback) tuples, default=None
        Extra skorch callbacks, deep-copied at fit so the estimator parameter is never mutated.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels.

    n_features_in_ : int
        Number of features seen during fit.

    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during fit. Defined only when ``X`` has string column names.

    net_ : skorch.NeuralNetClassifier
        The trained skorch net; ``net_.module_`` is the :class:`MLPHead`. It expects float32 features and
        encoded targets ``0..n_classes-1``.

    history_ : skorch.History
        Per-epoch training log (``train_loss``, and ``valid_loss``/``valid_acc`` with early stopping).

    n_iter_ : int
        Number of epochs actually run.

    See Also
    --------
    FocalLoss : The training criterion.
    MLPHead : The torch module being trained.

    Notes
    -----
    Inputs are converted to float32 (the dtype of the network); float32 arrays, including
    ``np.memmap``, are used without copying and read one batch at a time.

    Examples
    --------
    >>> from sklearn.datasets import make_classification
    >>> from skdfl.heads import FocalHeadClassifier
    >>> X, y = make_classification(n_samples=200, n_features=8, random_state=0)
    >>> clf = FocalHeadClassifier(hidden_units=(16,), max_epochs=20, random_state=0).fit(X, y)
    >>> clf.predict_proba(X[:2]).shape
    (2, 2)
    """

    _parameter_constraints: dict = {
        "hidden_units": ["array-like", Interval(Integral, 1, None, closed="left")],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "noise_std": [Interval(Real, 0, None, closed="left")],
        "gamma": [Interval(Real, 0, None, closed="left")],
        "alpha": [None, StrOptions({"balanced"}), dict, "array-like"],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "patience": [Interval(Integral, 1, None, closed="left")],
        "device": [str, torch.device],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "callbacks": [None, list],
    }

    def __init__(
        self,
        *,
        hidden_units=(512,),
        dropout=0.0,
        noise_std=0.0,
        gamma=2.0,
        alpha=None,
        lr=1e-3,
        weight_decay=0.0,
        max_epochs=50,
        batch_size=128,
        early_stopping=False,
        validation_fraction=0.1,
        patience=5,
        device="auto",
        random_state=None,
        verbose=0,
        callbacks=None,
    ):
        self.hidden_units = hidden_units
        self.dropout = dropout
        self.noise_std = noise_std
        self.gamma = gamma
        self.alpha = alpha
        self.lr = lr
        self.weight_decay = weight_decay
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        self.callbacks = callbacks

    def _class_weights(self, y_encoded):
        """Resolve ``alpha`` to one weight per class (ordered as ``classes_``), or None."""
        alpha = self.alpha
        if alpha is None:
            return None
        n_classes = len(self.classes_)
        if isinstance(alpha, str) or isinstance(alpha, dict):
            return compute_class_weight(alpha, classes=self.classes_, y=self.classes_[y_encoded])
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

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y):
        """Train the head.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training embeddings. float32 arrays (including ``np.memmap``) are used without a copy.

        y : array-like of shape (n_samples,)
            Class labels of any type (ints, strings, ...).

        Returns
        -------
        self : FocalHeadClassifier
            Fitted estimator.
        """
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        self.classes_, y_encoded = np.unique(y, return_inverse=True)
        n_classes = len(self.classes_)
        if n_classes < 2:
            raise ValueError(
                "FocalHeadClassifier needs samples of at least 2 classes, but the data contains only one "
                f"class: {self.classes_.tolist()[0]!r}"
            )
        hidden_units = _check_hidden_units(self.hidden_units)
        alpha = self._class_weights(y_encoded)
        device = self._resolve_device()

        # One int seed drives both torch and the validation split. Going through check_random_state means a
        # RandomState instance is advanced by each fit (successive fits differ), as in sklearn estimators.
        seed = None
        if self.random_state is not None:
            seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))

        callbacks = copy.deepcopy(list(self.callbacks or []))
        if self.early_stopping:
            train_split = ValidSplit(self.validation_fraction, stratified=True, random_state=seed)
            callbacks.append(
                (
                    "early_stopping",
                    EarlyStopping(monitor="valid_loss", patience=self.patience, load_best=True),
                )
            )
        else:
            train_split = None

        net = NeuralNetClassifier(
            module=MLPHead,
            module__n_features=X.shape[1],
            module__n_classes=n_classes,
            module__hidden_units=hidden_units,
            module__dropout=float(self.dropout),
            module__noise_std=float(self.noise_std),
            criterion=FocalLoss,
            criterion__gamma=float(self.gamma),
            criterion__alpha=None if alpha is None else alpha.tolist(),
            optimizer=torch.optim.Adam,
            optimizer__weight_decay=float(self.weight_decay),
            lr=float(self.lr),
            max_epochs=int(self.max_epochs),
            batch_size=int(self.batch_size),
            train_split=train_split,
            callbacks=callbacks,
            dataset=_ArrayDataset,
            iterator_train__shuffle=True,
            iterator_train__collate_fn=_collate_batch,
            iterator_valid__collate_fn=_collate_batch,
            # skorch's "auto" only knows torch's own losses; this makes ``net_.predict_proba`` a softmax.
            predict_nonlinearity=_softmax,
            device=device,
            verbose=int(self.verbose),
        )
        with _seeded(seed, device):
            net.fit(X, y_encoded)

        self.net_ = net
        self.history_ = net.history
        self.n_iter_ = len(net.history)
        return self

    def _log_proba(self, X):
        X = validate_data(self, X, dtype=np.float32, reset=False)
        # Each DataLoader pass draws a base seed from the global torch RNG; predicting should not change
        # the random stream of the caller.
        with torch.random.fork_rng(devices=[]):
            logits = self.net_.forward(X, training=False)
        # float64 log-softmax on CPU: accurate, and float64 is unsupported on some accelerators.
        return torch.log_softmax(logits.detach().cpu().double(), dim=1).numpy()

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
        return self._log_proba(X)

    def predict_proba(self, X):
        """Class probabilities (softmax of the logits; noise and dropout are off).

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
        return np.exp(self._log_proba(X))

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
        return self.classes_[np.argmax(self._log_proba(X), axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # Seeded CPU training is bit-reproducible; CUDA/MPS kernels (e.g. atomic adds in backward) are not.
        try:
            tags.non_deterministic = self._resolve_device().type != "cpu"
        except (TypeError, ValueError):  # an invalid device is reported by fit, not by tag inspection
            tags.non_deterministic = False
        return tags
