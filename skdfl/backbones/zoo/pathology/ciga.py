"""Ciga et al. 2022, "Self supervised contrastive learning for digital histopathology" (SimCLR ResNet-18)."""

from ...registry import BackboneSpec

SPECS = (
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
)
