"""Chhipa et al. 2023, Magnification Prior Contrastive Similarity (MPCS) on BreakHis.

The repository publishes no weights: these entries load a state dict saved from its training code.
"""

from ...registry import BackboneSpec
from .._common import SSL_HEADS

SOURCE = "https://github.com/prakashchhipa/Magnification-Prior-Self-Supervised-Method"

SPECS = (
    BackboneSpec(
        name="resnet50.mpcs_breakhis",
        architecture="ResNet-50",
        timm_model="resnet50",
        pretraining_data="BreakHis (breast, 4 magnifications)",
        method="MPCS (Chhipa et al. 2023)",
        medical=True,
        embedding_dim=2048,
        weights="manual",
        source=SOURCE,
        filename="mpcs_resnet50.pth",
        adapter="prefix",
        strip_prefixes=("module.", "backbone."),
        drop_prefixes=SSL_HEADS,
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
        source=SOURCE,
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
)
