"""kaiko.ai: "Towards Large-Scale Training of Pathology Foundation Models" DINO ViTs (timm ports on the hub)."""

from ...registry import BackboneSpec
from .._common import HALF

SPECS = (
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
)
