"""Owkin: Phikon (iBOT ViT-B/16) and Phikon-v2 (DINOv2 ViT-L/16), published as transformers models."""

from functools import partial

from torch import nn

from ...registry import BackboneSpec

SPECS = (
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
)
