"""How the head's training data is held, batched, split and summarised.

skorch's default path (a ``Dataset`` that returns one row per ``__getitem__``, a ``DataLoader`` that collates
them) costs Python calls per sample and per batch that dominate the fit of a small head. Here the embeddings
become one tensor, zero-copy for float32 arrays (``np.memmap`` included: rows are read when a batch asks for
them), moved to the device once when it fits, and a batch is one indexing operation on it.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from sklearn.model_selection import StratifiedGroupKFold, StratifiedShuffleSplit

from ._augment import mixup_embeddings

__all__ = ["BatchIterator", "EmbeddingDataset", "FeatureMoments", "validation_split"]

# Inputs up to this size are copied to an accelerator once; larger ones (e.g. a memory-mapped store) stay in
# host memory and travel one batch at a time.
_MAX_DEVICE_COPY_BYTES = 2 * 1024**3
# Inputs up to this size are gathered in shuffled order once per pass and sliced into batches; larger ones
# are gathered batch by batch, so a memory-mapped store is never copied whole.
_MAX_PASS_COPY_BYTES = 256 * 1024**2
# Rows per chunk when summarising features, so a memory-mapped store is never converted to float64 whole.
_MOMENT_CHUNK_ROWS = 16384


def _as_tensor(array):
    """A torch view of a float32 array, without copying when the layout allows it."""
    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)
    with warnings.catch_warnings():
        # Read-only inputs (e.g. a memmap opened with mode="r") are only ever read, never written.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


class EmbeddingDataset(torch.utils.data.Dataset):
    """Embeddings (and, for training, encoded labels and sample weights) held as tensors.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features) or (n_samples, n_draws, n_features)
        float32 embeddings. The 3-D layout is an augmentation bank: ``n_draws`` embeddings of each sample
        (e.g. of augmented versions of its image), one of which is drawn per sample each time the sample
        enters a training batch; validation batches use draw 0.

    y : ndarray of shape (n_samples,) or None
        Encoded labels ``0..n_classes-1``; None at inference.

    sample_weight : ndarray of shape (n_samples,) or None
        Per-sample loss weights; None weighs all samples by 1.

    rows : ndarray of int or None
        Subset of the rows of ``X`` that make up this dataset (e.g. the training part of an early-stopping
        split), so that the subset is never copied out of ``X``.

    device : torch.device
        Where batches are delivered.

    Attributes
    ----------
    X, y : the inputs, under the names that skorch's scoring callbacks read.
    """

    def __init__(self, X, y=None, sample_weight=None, rows=None, device="cpu"):
        self.device = torch.device(device)
        self.X = X
        self.y = y
        self.rows = None if rows is None else torch.as_tensor(np.asarray(rows, dtype=np.int64))
        data = _as_tensor(X)
        if self.device.type != "cpu" and data.numel() * data.element_size() <= _MAX_DEVICE_COPY_BYTES:
            data = data.to(self.device)
        self.data = data
        self._buffer = None  # the training passes' gather buffer (see _pass_buffer)
        self.targets = (
            None if y is None else torch.as_tensor(np.asarray(y, dtype=np.int64), device=self.device)
        )
        self.weights = None
        if sample_weight is not None:
            weights = np.asarray(sample_weight, dtype=np.float64)
            used = weights if rows is None else weights[np.asarray(rows)]
            # Dividing by the mean weight keeps the loss on the scale of unweighted training (so lr and
            # weight_decay mean the same), and makes a batch's mean loss an unbiased estimate of the loss on
            # the data set with each sample repeated `weight` times.
            weights = weights / used.mean()
            self.weights = torch.as_tensor(weights, dtype=torch.float32, device=self.device)

    @property
    def n_draws(self):
        """Number of embeddings per sample (1 for 2-D input)."""
        return self.data.shape[1] if self.data.ndim == 3 else 1

    def __len__(self):
        return len(self.data) if self.rows is None else len(self.rows)

    def __getitem__(self, index):
        ((inputs, target),) = self.batches(torch.as_tensor([index]), batch_size=1, training=False)
        return inputs[0], None if target is None else {k: v[0] for k, v in target.items()}

    def _gather(self, rows, training, out=None):
        """Embeddings of ``rows`` (a bank contributes a random draw when training, draw 0 otherwise).

        With ``out`` (a tensor of the result's shape on the data's device), the rows are written into it.
        """
        if self.data.ndim == 3:
            n_draws = self.data.shape[1]
            if training:
                draws = torch.randint(n_draws, (len(rows),))
            else:
                draws = torch.zeros(len(rows), dtype=torch.int64)
            flat_rows = (rows * n_draws + draws).to(self.data.device)
            return torch.index_select(self.data.reshape(-1, self.data.shape[2]), 0, flat_rows, out=out)
        return torch.index_select(self.data, 0, rows.to(self.data.device), out=out)

    def _pass_buffer(self, n_rows):
        """A tensor for the ``n_rows`` embeddings of a training pass, reused from pass to pass.

        A fresh tensor of this size is new memory on every pass, and writing it first costs page faults that
        took longer than the gathering itself (4 ms vs 1.5 ms for 4,000 x 1,024 floats on CPU).
        """
        shape = (n_rows, self.data.shape[-1])
        buffer = self._buffer
        if buffer is None or tuple(buffer.shape) != shape:
            buffer = self._buffer = torch.empty(shape, dtype=self.data.dtype, device=self.data.device)
        return buffer

    def batches(self, order, batch_size, training, mixup_alpha=0.0):
        """Yield the batches of one pass over the samples at positions ``order``.

        Data small enough is gathered once per pass in that order and the batches are slices of it (one
        indexing operation per pass instead of one per batch); in order and without a bank, nothing is
        copied at all. Larger data (e.g. a memory-mapped store) is gathered batch by batch.

        Parameters
        ----------
        order : torch.Tensor of int64
            Positions in this dataset (not rows of ``X`` when ``rows`` is set), in visiting order.

        batch_size : int
            Samples per batch; the last batch may be smaller.

        training : bool
            Draw one embedding per sample from an augmentation bank at random and apply mixup. Otherwise
            (validation, inference) a bank contributes its draw 0, by convention the un-augmented embedding.

        mixup_alpha : float
            ``Beta`` concentration of mixup; 0 disables it.

        Yields
        ------
        inputs : torch.Tensor of shape (batch, n_features)
            On the device.

        target : dict of torch.Tensor or None
            ``target`` (labels), optional ``weight``, and with mixup ``lam``, ``partner_target`` and
            ``partner_weight``; None without labels.
        """
        rows = order if self.rows is None else self.rows[order]
        n = len(rows)
        sequential = self.rows is None and self.data.ndim == 2 and torch.equal(order, torch.arange(n))
        if sequential:
            whole = self.data
        elif self.data.numel() * self.data.element_size() <= _MAX_PASS_COPY_BYTES:
            # A training pass's batches are consumed before the next pass starts, so passes share a buffer;
            # other passes (validation, inference) may be kept whole by the caller and get fresh memory.
            whole = self._gather(rows, training, out=self._pass_buffer(n) if training else None)
        else:
            whole = None
        device_rows = rows.to(self.device)
        targets = None if self.targets is None else self.targets[device_rows]
        weights = None if self.weights is None else self.weights[device_rows]
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            inputs = self._gather(rows[start:stop], training) if whole is None else whole[start:stop]
            inputs = inputs.to(self.device, non_blocking=True)
            if targets is None:
                yield inputs, None
                continue
            target = {"target": targets[start:stop]}
            if weights is not None:
                target["weight"] = weights[start:stop]
            if training and mixup_alpha > 0:
                inputs, partner, lam = mixup_embeddings(inputs, mixup_alpha)
                target["lam"] = lam
                target["partner_target"] = target["target"][partner]
                if "weight" in target:
                    target["partner_weight"] = target["weight"][partner]
            yield inputs, target


class BatchIterator:
    """Mini-batches over an :class:`EmbeddingDataset`, the ``iterator_train``/``iterator_valid`` of the net.

    Parameters
    ----------
    dataset : EmbeddingDataset
        The data.

    batch_size : int
        Samples per batch (the last batch of a pass may be smaller).

    shuffle : bool, default=False
        Training mode: reshuffle at each pass, draw from augmentation banks, apply mixup.

    min_steps : int, default=1
        With ``shuffle``, make several passes over the data (each reshuffled) until at least this many
        batches were produced: on small data sets one pass is a single optimiser step, and an "epoch" of
        one step is too little for the budget and too noisy for the convergence test.

    mixup_alpha : float, default=0.0
        ``Beta`` concentration of mixup; 0 disables it.
    """

    def __init__(self, dataset, batch_size, shuffle=False, min_steps=1, mixup_alpha=0.0):
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.min_steps = int(min_steps)
        self.mixup_alpha = float(mixup_alpha)

    def _passes(self):
        if not self.shuffle:
            return 1
        steps_per_pass = math.ceil(len(self.dataset) / self.batch_size)
        return max(1, math.ceil(self.min_steps / steps_per_pass))

    def __len__(self):
        return self._passes() * math.ceil(len(self.dataset) / self.batch_size)

    def __iter__(self):
        n = len(self.dataset)
        for _ in range(self._passes()):
            order = torch.randperm(n) if self.shuffle else torch.arange(n)
            yield from self.dataset.batches(
                order, self.batch_size, training=self.shuffle, mixup_alpha=self.mixup_alpha
            )


class FeatureMoments:
    """Weighted per-feature mean and standard deviation, accumulated chunk by chunk (for ``partial_fit``).

    Each chunk is summarised in float32 by NumPy (one pass for the mean, one for the spread), and chunks are
    merged in float64 with Chan et al.'s pairwise update; the statistics only set noise and dropout scales,
    for which float32 chunk sums are ample.

    Attributes
    ----------
    mean_, std_ : ndarray of shape (n_features,)
        The statistics so far.
    """

    def __init__(self):
        self._weight = 0.0
        self._mean = None
        self._m2 = None

    def _chunks(self, X, sample_weight, rows):
        n = len(X) if rows is None else len(rows)
        for start in range(0, n, _MOMENT_CHUNK_ROWS):
            stop = min(start + _MOMENT_CHUNK_ROWS, n)
            index = slice(start, stop) if rows is None else np.asarray(rows)[start:stop]
            # C order whatever the input's (e.g. a DataFrame's columns): NumPy's sums then add in the same order,
            # so the statistics, and the noise they scale, do not depend on the container.
            chunk = np.ascontiguousarray(X[index], dtype=np.float32)
            weight = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)[index]
            if chunk.ndim == 3:
                n_draws = chunk.shape[1]
                chunk = chunk.reshape(-1, chunk.shape[2])
                weight = None if weight is None else np.repeat(weight, n_draws)
            yield chunk, weight

    def update(self, X, sample_weight=None, rows=None):
        """Add the rows ``rows`` of ``X`` (all rows when None); a bank contributes each of its draws."""
        for chunk, weight in self._chunks(X, sample_weight, rows):
            if weight is None:
                total = float(len(chunk))
                mean = chunk.mean(axis=0)
                var = np.square(chunk - mean).mean(axis=0)
            else:
                total = float(weight.sum())
                if total == 0:
                    continue
                w = (weight / total).astype(np.float32)
                mean = w @ chunk
                var = w @ np.square(chunk - mean)
            mean, m2 = mean.astype(np.float64), var.astype(np.float64) * total
            if self._mean is None:
                self._weight, self._mean, self._m2 = total, mean, m2
                continue
            merged = self._weight + total
            delta = mean - self._mean
            self._mean = self._mean + delta * (total / merged)
            self._m2 = self._m2 + m2 + delta**2 * (self._weight * total / merged)
            self._weight = merged
        return self

    @property
    def mean_(self):
        return self._mean

    @property
    def std_(self):
        return np.sqrt(np.maximum(self._m2 / self._weight, 0.0))


def validation_split(y, groups, validation_fraction, random_state):
    """Training and validation rows for early stopping, keeping each group on one side.

    Parameters
    ----------
    y : ndarray of shape (n_samples,)
        Encoded labels (the split is stratified by them).

    groups : ndarray of shape (n_samples,) or None
        Group labels (e.g. patients). When given, whole groups are held out (``StratifiedGroupKFold`` with
        ``round(1 / validation_fraction)`` folds, first fold), so no group is on both sides.

    validation_fraction : float
        Share of the samples to hold out.

    random_state : int or None
        Seed of the split.

    Returns
    -------
    train_rows, valid_rows : ndarray of int
    """
    n_samples, n_classes = len(y), len(np.unique(y))
    context = (
        f"early_stopping=True holds out validation_fraction={validation_fraction} of the {n_samples} training "
        "samples to decide when to stop"
    )
    advice = "pass early_stopping=False, a larger validation_fraction, or more training data"
    if groups is None:
        n_valid = math.ceil(validation_fraction * n_samples)
        if n_valid < n_classes or n_samples - n_valid < n_classes:
            raise ValueError(
                f"{context}: that is {n_valid} validation and {n_samples - n_valid} training samples, but a "
                f"stratified split needs at least one sample of each of the {n_classes} classes on each side; "
                f"{advice}"
            )
        splitter = StratifiedShuffleSplit(
            n_splits=1, test_size=validation_fraction, random_state=random_state
        )
        try:
            train_rows, valid_rows = next(splitter.split(np.zeros(n_samples), y))
        except ValueError as exc:
            raise ValueError(f"{context}, and the stratified split failed: {exc}; {advice}") from exc
        return train_rows, valid_rows

    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise ValueError(
            f"{context} by group, but all samples are in one group; {advice}, or pass groups with at least "
            "2 distinct values"
        )
    n_splits = int(min(n_groups, max(2, round(1 / validation_fraction))))
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=random_state)
    with warnings.catch_warnings():
        # Classes rarer than n_splits are expected on small data; the split is still group-disjoint.
        warnings.filterwarnings("ignore", message="The least populated class")
        train_rows, valid_rows = next(splitter.split(np.zeros(n_samples), y, groups))
    return train_rows, valid_rows
