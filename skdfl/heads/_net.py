"""The skorch net that trains a head: skorch's loop and callbacks, with weighted and mixup-aware losses."""

from __future__ import annotations

import torch
from skorch import NeuralNetClassifier
from skorch.callbacks import Callback, EpochScoring
from skorch.dataset import unpack_data
from skorch.utils import to_numpy

__all__ = ["HeadNet", "labels_of", "observes_training_batches"]

_BATCH_HOOKS = ("on_batch_begin", "on_batch_end", "on_grad_computed")


def labels_of(target):
    """The labels in a batch target (a dict from :class:`EmbeddingDataset`, or a plain label tensor)."""
    if isinstance(target, dict):
        target = target["target"]
    return to_numpy(target)


def observes_training_batches(callback):
    """Whether a skorch callback acts on training batches (overrides a batch hook that training reaches).

    :class:`~skorch.callbacks.EpochScoring` on validation data (``on_train=False``, the default) overrides
    ``on_batch_end`` but returns at once for training batches, so it does not count.
    """
    if isinstance(callback, EpochScoring) and not callback.on_train:
        hooks = ("on_batch_begin", "on_grad_computed")
    else:
        hooks = _BATCH_HOOKS
    return any(getattr(type(callback), hook, None) is not getattr(Callback, hook) for hook in hooks)


class HeadNet(NeuralNetClassifier):
    """A :class:`skorch.NeuralNetClassifier` whose batch targets carry sample weights and mixup partners.

    The criterion must return per-sample losses (``reduction="none"``); :meth:`get_loss` combines them:
    ``lam * loss(target) + (1 - lam) * loss(partner_target)`` under mixup, each term times its sample
    weight, averaged over the batch. Everything else (loop, callbacks, history, device handling,
    serialisation) is skorch's.

    A training epoch skips skorch's per-batch machinery (callback notifications, the optimiser closure, one
    ``loss.item()`` per batch) when no callback observes training batches (:func:`observes_training_batches`):
    a linear head's step is a few small operations, and that machinery was about a third of its fit time. The
    steps and the history are the same (each batch's loss and size are recorded, read back once per epoch);
    with a callback such as ``GradientNormClipping`` or a per-batch ``LRScheduler``, skorch's loop runs.
    """

    @property
    def _default_callbacks(self):
        callbacks = []
        for name, callback in super()._default_callbacks:
            if name == "valid_acc":
                # skorch's default reads targets as arrays; ours are dicts.
                callback = EpochScoring(
                    "accuracy", name="valid_acc", lower_is_better=False, target_extractor=labels_of
                )
            callbacks.append((name, callback))
        return callbacks

    def run_single_epoch(self, iterator, training, prefix, step_fn, **fit_params):
        """One pass of skorch's epoch, through the lean training loop when nothing observes its batches."""
        lean = (
            iterator is not None
            and training
            and not fit_params
            and not any(observes_training_batches(callback) for _, callback in self.callbacks_)
        )
        if not lean:
            return super().run_single_epoch(iterator, training, prefix, step_fn, **fit_params)
        losses, sizes = [], []
        self._set_training(True)
        for batch in iterator:
            inputs, target = unpack_data(batch)
            self._zero_grad_optimizer()
            loss = self.get_loss(self.infer(inputs), target, X=inputs, training=True)
            loss.backward()
            self._step_optimizer(None)
            losses.append(loss.detach())
            sizes.append(len(inputs))
        # One device-to-host read per epoch instead of one per batch.
        values = torch.stack(losses).tolist() if losses else []
        for value, size in zip(values, sizes, strict=True):
            self.history.new_batch()
            self.history.record_batch(prefix + "_loss", value)
            self.history.record_batch(prefix + "_batch_size", size)
        self.history.record(prefix + "_batch_count", len(values))
        return None

    def _set_training(self, training=True):
        # skorch calls this before every batch; walking the module tree each time is a measurable share of a
        # small head's step, and the modules only change mode together, through this method.
        if self.module_.training is training and self.criterion_.training is training:
            return
        super()._set_training(training)

    def get_loss(self, y_pred, y_true, X=None, training=False):
        """Weighted mean of the per-sample criterion over the batch.

        Parameters
        ----------
        y_pred : torch.Tensor of shape (batch, n_classes)
            Logits.

        y_true : dict of torch.Tensor or torch.Tensor
            Batch target from :class:`EmbeddingDataset` (``target``, optional ``weight``, and with mixup
            ``lam``, ``partner_target``, ``partner_weight``), or plain labels.

        X, training : ignored
            Part of skorch's signature.

        Returns
        -------
        loss : torch.Tensor
            Scalar loss.
        """
        if not isinstance(y_true, dict):
            y_true = {"target": y_true}
        target = y_true["target"].to(y_pred.device)
        loss = self._weighted(self.criterion_(y_pred, target), y_true.get("weight"))
        if "lam" in y_true:
            lam = y_true["lam"]
            partner_loss = self._weighted(
                self.criterion_(y_pred, y_true["partner_target"]), y_true.get("partner_weight")
            )
            loss = lam * loss + (1 - lam) * partner_loss
        return loss.mean()

    @staticmethod
    def _weighted(loss, weight):
        if loss.ndim != 1:
            raise ValueError("the criterion of a HeadNet must return per-sample losses (reduction='none')")
        return loss if weight is None else loss * weight.to(loss.dtype)
