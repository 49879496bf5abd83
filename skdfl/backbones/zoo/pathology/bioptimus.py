"""Bioptimus: H-optimus-0 (DINOv2 ViT-g/14 with 4 registers)."""

from ...registry import BackboneSpec

SPECS = (
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
)
