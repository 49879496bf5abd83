"""Wang et al. 2022: CTransPath (SRCL), a Swin-T with a convolutional stem."""

from ...adapters import ConvStem
from ...registry import BackboneSpec

SPECS = (
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
)
