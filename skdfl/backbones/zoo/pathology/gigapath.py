"""Providence / Microsoft: Prov-GigaPath tile encoder (DINOv2 ViT-g/16)."""

from ...registry import BackboneSpec

SPECS = (
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
)
