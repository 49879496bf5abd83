"""The skorch net that trains a head: skorch's loop and callbacks, with weighted and mixup-aware losses."""

from __future__ import annotations

from skorch import NeuralNetClassifier
from skorch.callbacks import EpochScoring
from skorch.utils import to_numpy

__all__ = ["HeadNet", "labels_of"]


def labels_of(target):
    """The labels in a batch target (a dict from :class:`EmbeddingDataset`, or a plain label tensor)."""
    if isinstance(target, dict):
        target = target["target"]
    return to_numpy(target)


class HeadNet(NeuralNetClassifier):
    """A :class:`skorch.NeuralNetClassifier` whose batch targets carry sample weights and mixup partners.

    The criterion must return per-sample losses (``reduction="none"``); :meth:`get_loss` combines them:
    ``lam * loss(target) + (1 - lam) * loss(partner_target)`` under mixup, each term times its sample
    weight, averaged over the batch. Everything else (loop, callbacks, history, device handling,
    serialisation) is skorch's.
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
