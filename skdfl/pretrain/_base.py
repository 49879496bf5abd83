"""The training loop shared by the contrastive pretrainers: data, augmentation, optimisation, checkpoints.

One fit is a straight line: validate ``X`` into cells (subclass) -> build encoder + projection head ->
resume from ``checkpoint_dir`` if it holds this run -> per epoch: draw the items (subclass), read and resize
the images on the CPU, augment and normalise them on the device, NT-Xent, step, checkpoint.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
import timm.optim
import torch
from sklearn.base import BaseEstimator, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .._device import PRECISIONS, autocast, resolve_device, resolve_precision
from ..backbones import TokenPooling, get_spec, load_backbone, save_weights, weights_fingerprint
from ..io import read_image
from ..storage import content_key
from ..transforms import fit_geometry
from ._augment import build_augmentation
from ._checkpoint import load_checkpoint, save_checkpoint
from ._loss import nt_xent_loss

__all__ = [
    "COMMON_PARAMETERS_DOC",
    "FITTED_ATTRIBUTES_DOC",
    "ContrastivePretrainer",
    "TrainingSet",
]

PRETRAIN_RESIZE_POLICIES = ("crop", "stretch", "pad")
OPTIMIZERS = ("adam", "adamw", "lars", "sgd")
# Decoded, resized images are kept in memory across epochs when they fit in this much (single process).
_MAX_CACHED_BYTES = 1 << 30
# Parameters that do not change what a run computes: a checkpoint stays valid when they change.
_RUN_INDEPENDENT = {"max_epochs", "verbose", "checkpoint_dir", "device", "num_workers"}


@dataclass
class TrainingSet:
    """What a pretrainer trains on: image cells, and the items of one epoch.

    Attributes
    ----------
    cells : list
        Paths, arrays or ImageSource objects, read with :func:`skdfl.io.read_image`.
    draw : callable
        ``draw(rng) -> ndarray (n_items, n_cells_per_item)``: row positions into ``cells`` of one epoch's
        items, in training order. One cell per item: two augmentations of it are the positive pair (SimCLR);
        two cells: their augmentations are the pair (MPCS).
    identity : dict
        JSON-serialisable description of the data, compared when resuming from a checkpoint.
    """

    cells: list
    draw: Any
    identity: dict


class _CellReader:
    """Cell ``i`` -> ``(S, S, 3)`` uint8 at the training size; decoded images kept when they fit in memory."""

    def __init__(self, cells, size: int, policy: str, keep: bool):
        self.cells = cells
        self.size = size
        self.policy = policy
        self.kept: dict[int, np.ndarray] | None = {} if keep else None

    def __call__(self, i: int) -> np.ndarray:
        if self.kept is not None and i in self.kept:
            return self.kept[i]
        where = f"image {i}"
        img = fit_geometry(read_image(self.cells[i], where), (self.size, self.size), self.policy, where=where)
        img = np.ascontiguousarray(img)
        if self.kept is not None:
            self.kept[i] = img
        return img


class _ItemDataset(Dataset):
    def __init__(self, reader: _CellReader, items: np.ndarray):
        self.reader = reader
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.reader(int(i)) for i in self.items[k]]))


def _cell_identity(cells) -> str:
    h = hashlib.sha256()
    for i, cell in enumerate(cells):
        h.update(content_key(cell, where=f"image {i}").encode())
    return h.hexdigest()


def _epoch_seeds(random_state: int, epoch: int) -> tuple[np.random.Generator, int]:
    # Every epoch's randomness derives from (random_state, epoch) alone, so a resumed run replays it exactly.
    numpy_seed, torch_seed = np.random.SeedSequence([random_state, epoch]).generate_state(2)
    return np.random.default_rng(numpy_seed), int(torch_seed)


def _unwrap(module: nn.Module) -> nn.Module:
    # load_backbone wraps token+mean ViTs; the registry's loader re-wraps, so the file holds the bare model.
    return module.model if isinstance(module, TokenPooling) else module


COMMON_PARAMETERS_DOC = """
    backbone : str or torch.nn.Module, default="resnet18"
        Encoder: a registry name, any timm model name (``"resnet18"``, ``"resnet50.tv_in1k"``...) or a module
        mapping ``(n, 3, H, W)`` to pooled ``(n, dim)`` features (copied, never modified).
    pretrained : bool, default=False
        Start from the backbone's pretrained weights (resolved offline first, like
        :class:`~skdfl.BackboneEmbedder`); ``False`` starts from random weights seeded by ``random_state``.
    checkpoint_path : str or path-like, default=None
        Initial encoder weights from a local file (e.g. a previous :meth:`save_backbone`); takes
        precedence over ``pretrained``.
    image_size : int, default=224
        Side of the square images the encoder is trained on.
    resize : {{"crop", "stretch", "pad"}}, default="{resize}"
        How every image is brought to ``image_size`` before augmentation (see :mod:`skdfl.transforms`;
        ``"crop"`` scales the shorter side and centre-crops).
    temperature : float, default={temperature}
        NT-Xent temperature (:func:`nt_xent_loss`).
    projection_dim : int, default=128
        Output width of the two-layer MLP projection head (hidden width = the encoder's).
    batch_size : int, default={batch_size}
        Positive pairs per step; each pair's other ``2 * (batch_size - 1)`` views are its negatives. The
        last incomplete batch of an epoch is dropped.
    max_epochs : int, default={max_epochs}
        Epochs in total, counting those restored from ``checkpoint_dir``.
    lr : float, default=1e-3
        Peak learning rate.
    weight_decay : float, default=1e-6
        Not applied to biases and normalisation layers.
    optimizer : {{"adam", "adamw", "lars", "sgd"}}, default="{optimizer}"
        Built by ``timm.optim.create_optimizer_v2`` (LARS as in the SimCLR and MPCS papers' large-batch
        runs; Adam is the robust choice for small batches).
    lr_schedule : {{"cosine", "constant"}}, default="cosine"
        Cosine decay per step from ``lr`` to 0 over ``max_epochs``, or constant.
    crop_scale : (float, float) or None, default={crop_scale!r}
        Area range of the random resized crop; ``None`` disables it.
    flip_rotate : bool, default=True
        Random flips and 90-degree rotations.
    color_jitter : float, default={color_jitter}
        Colour-jitter strength ``s`` (brightness / contrast / saturation ``0.8 s``, hue ``0.2 s``, p=0.8).
    gray_probability : float, default={gray_probability}
        Probability of a grayscale view.
    blur_probability : float, default={blur_probability}
        Probability of a Gaussian blur.
    num_workers : int, default=0
        DataLoader processes decoding images. With ``0`` the decoded, resized images are kept in memory
        across epochs when they take at most 1 GiB, so files are decoded once.
    random_state : int, default=0
        Seeds the random-init weights, and every epoch's order, pairs and augmentations (epoch ``e`` draws
        from ``(random_state, e)``, which is what makes a resumed run identical to an uninterrupted one).
    device : str or torch.device, default="auto"
        ``"auto"`` picks CUDA, then MPS, then CPU. Augmentation runs there too, batched.
    precision : {{"auto", "fp32", "bf16", "fp16"}}, default="auto"
        Autocast precision of the forward pass (fp16 uses a gradient scaler); the loss is computed in
        float32. ``"auto"``: fp16 on CUDA / MPS, bf16 on CPUs with native bf16, else fp32.
    checkpoint_dir : str or path-like, default=None
        Folder for a checkpoint written atomically after every epoch. A later ``fit`` with the same
        parameters and data resumes after the last complete epoch; one with other parameters or data
        raises :class:`RunMismatchError`. ``None``: no checkpoint.
    verbose : int, default=1
        ``0`` is silent; ``>= 1`` shows progress bars with the running loss."""

FITTED_ATTRIBUTES_DOC = """
    Attributes
    ----------
    encoder_ : torch.nn.Module
        The pretrained encoder, on CPU, eval mode, frozen. ``BackboneEmbedder(backbone=encoder_)`` embeds
        with it; :meth:`save_backbone` writes it to disk.
    projection_head_ : torch.nn.Module
        The projection MLP (only used by the loss; discarded for downstream use, as in SimCLR).
    data_config_ : dict
        ``input_size`` (pretraining size), ``mean``, ``std``, ``interpolation``, ``crop_pct``.
    embedding_dim_ : int
        Width of the encoder's pooled features.
    history_ : list of dict
        Per epoch: ``epoch``, ``loss`` (mean NT-Xent), ``lr`` (at the last step), ``seconds``, ``pairs``,
        ``pairs_per_second``; restored epochs included.
    loss_curve_ : ndarray of shape (n_iter_,)
        Mean loss per epoch.
    n_iter_ : int
        Epochs completed.
    n_items_per_epoch_ : int
        Positive pairs drawn per epoch (before dropping the last incomplete batch).
    n_images_ : int
        Images (cells of ``X``) trained on.
    resumed_from_epoch_ : int
        Epochs restored from ``checkpoint_dir`` by the last ``fit`` (0 for a fresh run)."""


class ContrastivePretrainer(BaseEstimator):
    """Shared machinery of :class:`SimCLRPretrainer` and :class:`MPCSPretrainer` (not used directly).

    Subclasses define ``__init__`` with every parameter (see their docstrings), ``_training_set(X)`` and
    ``_method``.
    """

    _method = "contrastive"

    _parameter_constraints: dict = {
        "backbone": [str, nn.Module],
        "pretrained": ["boolean"],
        "checkpoint_path": [str, os.PathLike, None],
        "image_size": [Interval(Integral, 8, None, closed="left")],
        "resize": [StrOptions(set(PRETRAIN_RESIZE_POLICIES))],
        "temperature": [Interval(Real, 0, None, closed="neither")],
        "projection_dim": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 2, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "optimizer": [StrOptions(set(OPTIMIZERS))],
        "lr_schedule": [StrOptions({"cosine", "constant"})],
        "crop_scale": [tuple, list, None],
        "flip_rotate": ["boolean"],
        "color_jitter": [Interval(Real, 0, None, closed="left")],
        "gray_probability": [Interval(Real, 0, 1, closed="both")],
        "blur_probability": [Interval(Real, 0, 1, closed="both")],
        "num_workers": [Interval(Integral, 0, None, closed="left")],
        "random_state": [Interval(Integral, 0, None, closed="left")],
        "device": [str, torch.device],
        "precision": [StrOptions(set(PRECISIONS))],
        "checkpoint_dir": [str, os.PathLike, None],
        "verbose": ["verbose"],
    }

    # ------------------------------------------------------------------ subclass hooks
    def _training_set(self, X) -> TrainingSet:  # pragma: no cover - abstract
        raise NotImplementedError

    def _pair_views(self, x1: torch.Tensor, x2: torch.Tensor, augment: nn.Module):
        """Augment the two sides of a batch of pairs (independent draws; MPCS may replay one draw)."""
        return augment(x1), augment(x2)

    # ------------------------------------------------------------------ fit
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Pretrain the encoder on the images of ``X`` (no labels; ``y`` is ignored).

        With ``checkpoint_dir`` set, a checkpoint is written after every epoch and a later ``fit`` with the
        same parameters and data resumes after its last complete epoch (a finished run is only reloaded;
        raising ``max_epochs`` continues it).

        Returns
        -------
        self
        """
        self._check_augmentation_params()
        data = self._training_set(X)
        device = resolve_device(self.device)
        dtype = resolve_precision(self.precision, device)
        run = self._run_description(data)
        fork_devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=fork_devices):
            self._fit(data, device, dtype, run)
        return self

    def _check_augmentation_params(self) -> None:
        scale = self.crop_scale
        if scale is not None:
            ok = len(scale) == 2 and all(isinstance(s, Real) for s in scale) and 0 < scale[0] <= scale[1] <= 1
            if not ok:
                raise ValueError(f"crop_scale must be (min, max) with 0 < min <= max <= 1, or None; got {scale!r}")

    def _build(self, device: torch.device) -> tuple[nn.Module, nn.Module, dict, int]:
        torch.manual_seed(self.random_state)  # random-init weights (encoder and head) depend on it alone
        backbone = copy.deepcopy(self.backbone) if isinstance(self.backbone, nn.Module) else self.backbone
        encoder, data_config = load_backbone(
            backbone, pretrained=self.pretrained, checkpoint_path=self.checkpoint_path
        )
        encoder.requires_grad_(True)
        with torch.no_grad():
            dim = int(encoder(torch.zeros(2, 3, self.image_size, self.image_size)).shape[-1])
        # SimCLR's projection head g(h) = W2 relu(W1 h); the loss is computed on g(h), the encoder kept.
        head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, self.projection_dim))
        return encoder.to(device), head.to(device), dict(data_config), dim

    def _fit(self, data: TrainingSet, device: torch.device, dtype, run: dict) -> None:
        encoder, head, data_config, dim = self._build(device)
        memory_format = torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format
        encoder = encoder.to(memory_format=memory_format)
        optimizer = timm.optim.create_optimizer_v2(
            nn.ModuleDict({"encoder": encoder, "head": head}),
            opt=self.optimizer,
            lr=self.lr,
            weight_decay=self.weight_decay,
        )
        scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)

        history: list[dict] = []
        start = 0
        if self.checkpoint_dir is not None:
            state = load_checkpoint(self.checkpoint_dir, run=run)
            if state is not None:
                if state["epoch"] > self.max_epochs:
                    raise ValueError(
                        f"the checkpoint in {self.checkpoint_dir} already has {state['epoch']} epochs, more than "
                        f"max_epochs={self.max_epochs}; raise max_epochs or use another checkpoint_dir"
                    )
                encoder.load_state_dict(state["encoder"])
                head.load_state_dict(state["head"])
                optimizer.load_state_dict(state["optimizer"])
                scaler.load_state_dict(state["scaler"])
                history, start = state["history"], state["epoch"]
        self.resumed_from_epoch_ = start

        n_items = len(data.draw(np.random.default_rng(0)))
        if n_items < 2:
            raise ValueError(f"{type(self).__name__} needs at least 2 training items per epoch, got {n_items}")
        batch = min(self.batch_size, n_items)
        steps_per_epoch = n_items // batch
        total_steps = self.max_epochs * steps_per_epoch
        image_bytes = len(data.cells) * self.image_size**2 * 3
        reader = _CellReader(
            data.cells, self.image_size, self.resize, keep=self.num_workers == 0 and image_bytes <= _MAX_CACHED_BYTES
        )
        augment = build_augmentation(
            self.image_size,
            crop_scale=None if self.crop_scale is None else tuple(self.crop_scale),
            flip_rotate=self.flip_rotate,
            color_jitter=self.color_jitter,
            gray_probability=self.gray_probability,
            blur_probability=self.blur_probability,
        ).to(device)
        mean = torch.tensor(data_config["mean"], device=device).view(1, 3, 1, 1)
        std = torch.tensor(data_config["std"], device=device).view(1, 3, 1, 1)

        epochs = tqdm(
            total=self.max_epochs, initial=start, desc=f"{self._method} pretraining", unit="epoch",
            disable=not self.verbose,
        )  # fmt: skip
        with epochs:
            if history:
                epochs.set_postfix(loss=f"{history[-1]['loss']:.4f}")
            for epoch in range(start, self.max_epochs):
                rng, torch_seed = _epoch_seeds(self.random_state, epoch)
                torch.manual_seed(torch_seed)
                items = data.draw(rng)
                loader = DataLoader(
                    _ItemDataset(reader, items),
                    batch_size=batch,
                    shuffle=False,  # draw() already ordered the epoch
                    drop_last=True,  # a tiny last batch has almost no negatives
                    num_workers=self.num_workers,
                    pin_memory=device.type == "cuda",
                )
                encoder.train()
                head.train()
                losses, seen, tic = [], 0, time.perf_counter()
                lr = self.lr
                with tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}", leave=False, disable=not self.verbose) as bar:
                    for step, images in enumerate(loader):
                        lr = self._lr_at(epoch * steps_per_epoch + step, total_steps)
                        for group in optimizer.param_groups:
                            group["lr"] = lr
                        loss = self._step(images, encoder, head, augment, optimizer, scaler, mean, std,
                                          memory_format, device, dtype)  # fmt: skip
                        losses.append(loss)
                        seen += images.shape[0]
                        bar.set_postfix(loss=f"{loss:.4f}")
                        bar.update()
                seconds = time.perf_counter() - tic
                history.append({
                    "epoch": epoch + 1, "loss": float(np.mean(losses)), "lr": lr, "seconds": seconds,
                    "pairs": seen, "pairs_per_second": seen / seconds if seconds > 0 else float("nan"),
                })  # fmt: skip
                if self.checkpoint_dir is not None:
                    save_checkpoint(
                        self.checkpoint_dir, run=run, epoch=epoch + 1, history=history,
                        states={"encoder": encoder.state_dict(), "head": head.state_dict(),
                                "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict()},
                    )  # fmt: skip
                epochs.set_postfix(loss=f"{history[-1]['loss']:.4f}")
                epochs.update()

        self.encoder_ = encoder.to("cpu", memory_format=torch.contiguous_format).eval().requires_grad_(False)
        self.projection_head_ = head.to("cpu").eval().requires_grad_(False)
        self.data_config_ = {**data_config, "input_size": (3, self.image_size, self.image_size)}
        self.embedding_dim_ = dim
        self.history_ = history
        self.loss_curve_ = np.asarray([h["loss"] for h in history], dtype=float)
        self.n_iter_ = len(history)
        self.n_items_per_epoch_ = n_items
        self.n_images_ = len(data.cells)

    def _lr_at(self, step: int, total_steps: int) -> float:
        if self.lr_schedule == "constant" or total_steps <= 1:
            return float(self.lr)
        return float(self.lr * 0.5 * (1.0 + math.cos(math.pi * step / total_steps)))

    def _step(self, images, encoder, head, augment, optimizer, scaler, mean, std, memory_format, device, dtype):
        # uint8 (B, V, S, S, 3) -> float (B, V, 3, S, S) in [0, 1], on the device where kornia augments.
        x = images.to(device, non_blocking=True).permute(0, 1, 4, 2, 3).float().div_(255.0)
        if x.shape[1] == 1:
            v1, v2 = augment(x[:, 0]), augment(x[:, 0])
        else:
            v1, v2 = self._pair_views(x[:, 0], x[:, 1], augment)
        views = ((torch.cat([v1, v2]) - mean) / std).contiguous(memory_format=memory_format)
        with autocast(device, dtype):
            z = head(encoder(views))
        n = v1.shape[0]
        loss = nt_xent_loss(z[:n], z[n:], self.temperature)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"the contrastive loss became {loss.item()}; lower lr or use precision='fp32'"
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return float(loss.detach())

    # ------------------------------------------------------------------ run identity
    def _run_description(self, data: TrainingSet) -> dict:
        params = {k: v for k, v in self.get_params(deep=False).items() if k not in _RUN_INDEPENDENT}
        if isinstance(self.backbone, nn.Module):
            params["backbone"] = f"{type(self.backbone).__name__}:{weights_fingerprint(self.backbone)}"
        if params.get("checkpoint_path") is not None:
            params["checkpoint_path"] = os.fspath(params["checkpoint_path"])
        return json.loads(json.dumps({
            "method": self._method, **params,
            "data": hashlib.sha256(json.dumps(data.identity, sort_keys=True, default=str).encode()).hexdigest(),
            "images": _cell_identity(data.cells), "n_images": len(data.cells),
        }, default=str))  # fmt: skip

    # ------------------------------------------------------------------ export
    def save_backbone(self, path: str | os.PathLike, **description) -> Path:
        """Write the pretrained encoder's weights (safetensors) and its JSON config beside them.

        Only the encoder is written (no projection head, no optimiser state), through
        :func:`skdfl.backbones.save_weights`: ``path`` must end in ``.safetensors`` and the config (timm
        architecture, embedding size, the input size and normalisation used in pretraining, a note of the
        training run) goes to the same name with ``.json``. Both files are written atomically.

        Load them with ``BackboneEmbedder(backbone=<timm architecture>, checkpoint_path=path)``, or register
        them under a name with
        ``skdfl.backbones.register_backbone(skdfl.backbones.spec_from_weights(path, name=...))``.

        Parameters
        ----------
        path : str or path-like
            The ``.safetensors`` file to write.
        **description
            ``pretraining_data``, ``medical``, ``license`` or ``notes`` for the backbone table (defaults
            describe this run).

        Returns
        -------
        pathlib.Path
            The weights file.
        """
        check_is_fitted(self, "encoder_")
        path = Path(path)
        if path.suffix != ".safetensors":
            raise ValueError(f"save_backbone writes safetensors: the path must end in '.safetensors', got {path}")
        timm_model, timm_kwargs, rebuild = None, {}, {}
        if isinstance(self.backbone, str):
            spec = get_spec(self.backbone)
            if spec is not None:
                timm_model, timm_kwargs = spec.timm_model, dict(spec.timm_kwargs)
                if spec.build_hook:
                    # The hook changes the architecture (e.g. Keras ResNet strides): the weights only fit a
                    # module rebuilt with it.
                    rebuild["build_hook"] = spec.build_hook
        elif not getattr(_unwrap(self.encoder_), "pretrained_cfg", None):
            raise ValueError(
                "save_backbone needs a timm encoder to describe how to rebuild it; this one is a custom "
                f"{type(self.encoder_).__name__}: save its state_dict yourself (safetensors.torch.save_file) and "
                "load it with BackboneEmbedder(backbone=<that module>, checkpoint_path=...)"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        loss = f"{self.loss_curve_[-1]:.4f}" if len(self.loss_curve_) else "n/a"
        defaults = {
            "method": f"{self._method} (skdfl.pretrain)",
            "pretraining_data": f"{self.n_images_} unlabelled images (self-supervised)",
            "notes": f"{self._method} from {self.backbone if isinstance(self.backbone, str) else 'a custom module'}"
            f" (pretrained={self.pretrained}): {self.n_iter_} epochs at {self.image_size} px, batch "
            f"{self.batch_size}, temperature {self.temperature}, {self.optimizer} lr {self.lr}; final NT-Xent "
            f"{loss}.",
        }
        weights, _ = save_weights(
            self.encoder_,
            path,
            timm_model=timm_model,
            timm_kwargs=timm_kwargs,
            data_config=self.data_config_,
            embedding_dim=self.embedding_dim_,
            **{**defaults, **description, **rebuild},
        )
        return weights

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.input_tags.string = True
        tags.requires_fit = True
        tags.target_tags.required = False
        tags.non_deterministic = False
        return tags
