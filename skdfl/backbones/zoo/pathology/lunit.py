"""Lunit: Kang et al. 2023, "Benchmarking self-supervised learning on diverse pathology datasets" (DINO ViT-S/16)."""

from ...registry import BackboneSpec

URL = (
    "https://github.com/lunit-io/benchmark-ssl-pathology/releases/download/pretrained-weights/"
    "dino_vit_small_patch16_ep200.torch"
)

SPECS = (
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
        source=URL,
        url=URL,
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
)
