"""Paige: Virchow2 (DINOv2 ViT-H/14 with SwiGLU and 4 registers)."""

from timm.layers import SwiGLUPacked
from torch import nn

from ...registry import BackboneSpec

SPECS = (
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
)
