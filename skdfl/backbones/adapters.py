"""Checkpoint adapters: turn each published checkpoint layout into the state dict of a timm module.

An adapter is ``f(state, model, spec) -> state``. After it ran, :func:`load_into` loads the result
strictly (every backbone parameter and buffer must be present, nothing left over) and reports missing,
unexpected and mis-shaped keys by name.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable

import torch
from timm.layers import to_2tuple
from torch import nn

__all__ = [
    "ADAPTERS",
    "BUILD_HOOKS",
    "CheckpointMismatchError",
    "ConvStem",
    "TokenPooling",
    "apply_prefixes",
    "hf_vit_to_timm",
    "load_into",
    "lukemelas_efficientnet_to_timm",
]


class CheckpointMismatchError(RuntimeError):
    """A checkpoint does not cover the backbone's parameters exactly (missing/unexpected/mis-shaped)."""


# ----------------------------------------------------------------------------- modules
class ConvStem(nn.Module):
    """CTransPath's convolutional patch embedding (two stride-2 3x3 conv-BN-ReLU, then a 1x1 conv).

    Drop-in ``embed_layer`` for timm's Swin Transformer (channels-last output, as timm >= 0.9 expects).
    """

    def __init__(
        self,
        img_size=224,
        patch_size=4,
        in_chans=3,
        embed_dim=96,
        norm_layer=None,
        strict_img_size=True,
        output_fmt="NHWC",
        **kwargs,
    ):
        super().__init__()
        if to_2tuple(patch_size) != (4, 4):
            raise ValueError(f"ConvStem downsamples by exactly 4, got patch_size={patch_size}")
        if embed_dim % 8:
            raise ValueError(f"ConvStem needs embed_dim divisible by 8, got {embed_dim}")
        self.img_size = to_2tuple(img_size)
        self.patch_size = (4, 4)
        self.grid_size = (self.img_size[0] // 4, self.img_size[1] // 4)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.strict_img_size = strict_img_size
        layers: list[nn.Module] = []
        c_in, c_out = in_chans, embed_dim // 8
        for _ in range(2):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out)]
            layers.append(nn.ReLU(inplace=True))
            c_in, c_out = c_out, c_out * 2
        layers.append(nn.Conv2d(c_in, embed_dim, kernel_size=1))
        self.proj = nn.Sequential(*layers)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class TokenPooling(nn.Module):
    """Wrap a timm ViT so it returns ``concat(class token, mean of patch tokens)``.

    Register tokens (``num_prefix_tokens - 1`` of them) are excluded from the mean, as the Virchow2
    model card prescribes.

    Parameters
    ----------
    model : timm VisionTransformer
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 1))
        self.num_features = 2 * int(model.num_features)
        self.pretrained_cfg = getattr(model, "pretrained_cfg", {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.model.forward_features(x)
        return torch.cat([tokens[:, 0], tokens[:, self.num_prefix_tokens :].mean(dim=1)], dim=-1)


# ----------------------------------------------------------------------------- generic helpers
def apply_prefixes(
    state: dict[str, torch.Tensor], strip: Iterable[str] = (), drop: Iterable[str] = ()
) -> dict[str, torch.Tensor]:
    """Remove key prefixes (each repeatedly, in order), then drop keys starting with any of ``drop``."""
    strip, drop = tuple(strip), tuple(drop)
    out = {}
    for key, value in state.items():
        for prefix in strip:
            while key.startswith(prefix):
                key = key[len(prefix) :]
        if drop and key.startswith(drop):
            continue
        out[key] = value
    return out


def _expected_keys(model: nn.Module) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def load_into(
    model: nn.Module, state: dict[str, torch.Tensor], *, strict: bool = True, source: str = ""
) -> dict:
    """Load ``state`` into ``model`` and check it covers every parameter and buffer.

    Parameters
    ----------
    model : torch.nn.Module
    state : dict
        Already adapted to ``model``'s key names.
    strict : bool, default=True
        Raise on missing or unexpected keys; with ``False`` they only warn.
    source : str
        File or description named in errors.

    Returns
    -------
    dict
        ``{"missing": [...], "unexpected": [...], "loaded": n}``.

    Raises
    ------
    CheckpointMismatchError
        Mis-shaped tensors (always), or missing/unexpected keys when ``strict``.
    """
    expected = _expected_keys(model)
    shape_errors = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k])}"
        for k, v in state.items()
        if k in expected and tuple(v.shape) != tuple(expected[k])
    ]
    if shape_errors:
        raise CheckpointMismatchError(
            f"{source or 'checkpoint'}: {len(shape_errors)} tensor(s) have the wrong shape for "
            f"{type(model).__name__}: " + "; ".join(shape_errors[:8])
        )
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected and not k.endswith("num_batches_tracked"))
    report = {"missing": missing, "unexpected": unexpected, "loaded": len(expected) - len(missing)}
    if missing or unexpected:
        msg = (
            f"{source or 'checkpoint'} does not match {type(model).__name__}: "
            f"{len(missing)} missing key(s) {missing[:8]}{' ...' if len(missing) > 8 else ''}, "
            f"{len(unexpected)} unexpected key(s) {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}"
        )
        if strict:
            raise CheckpointMismatchError(msg + " (pass strict=False to load anyway)")
        warnings.warn(msg, stacklevel=3)
    model.load_state_dict(state, strict=False)
    return report


# ----------------------------------------------------------------------------- format converters
def hf_vit_to_timm(state: dict[str, torch.Tensor], *, dinov2: bool = False) -> dict[str, torch.Tensor]:
    """Hugging Face ``transformers`` ViT / Dinov2 keys -> timm VisionTransformer keys.

    The separate query/key/value projections are fused into timm's ``qkv`` (in that order); Dinov2's
    layer scales become ``ls1/ls2.gamma``; the mask token and pooler are dropped.
    """
    state = apply_prefixes(
        state, strip=("vit.", "dinov2.", "model."), drop=("pooler.", "embeddings.mask_token")
    )
    out: dict[str, torch.Tensor] = {}
    layer_ids = sorted({int(m.group(1)) for k in state if (m := re.match(r"encoder\.layer\.(\d+)\.", k))})
    for i in layer_ids:
        p, t = f"encoder.layer.{i}.", f"blocks.{i}."
        a = p + "attention.attention."
        for kind in ("weight", "bias"):
            parts = [
                state.pop(f"{a}{n}.{kind}") for n in ("query", "key", "value") if f"{a}{n}.{kind}" in state
            ]
            if parts:
                out[f"{t}attn.qkv.{kind}"] = torch.cat(parts, dim=0)
        renames = {
            "attention.output.dense.": "attn.proj.",
            ("norm1." if dinov2 else "layernorm_before."): "norm1.",
            ("norm2." if dinov2 else "layernorm_after."): "norm2.",
            ("mlp.fc1." if dinov2 else "intermediate.dense."): "mlp.fc1.",
            ("mlp.fc2." if dinov2 else "output.dense."): "mlp.fc2.",
        }
        for key in [k for k in state if k.startswith(p)]:
            rest = key[len(p) :]
            if rest.startswith("layer_scale1.lambda1"):
                out[f"{t}ls1.gamma"] = state.pop(key)
                continue
            if rest.startswith("layer_scale2.lambda1"):
                out[f"{t}ls2.gamma"] = state.pop(key)
                continue
            for old, new in renames.items():
                if rest.startswith(old):
                    out[t + new + rest[len(old) :]] = state.pop(key)
                    break
    renames = {
        "embeddings.cls_token": "cls_token",
        "embeddings.register_tokens": "reg_token",
        "embeddings.position_embeddings": "pos_embed",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "layernorm.weight": "norm.weight",
        "layernorm.bias": "norm.bias",
    }
    for old, new in renames.items():
        if old in state:
            out[new] = state.pop(old)
    out.update(state)  # anything unrecognised stays under its own name and is reported as unexpected
    return out


_LUKEMELAS_DS = {"_depthwise_conv.": "conv_dw.", "_bn1.": "bn1.", "_se_reduce.": "se.conv_reduce.",
                 "_se_expand.": "se.conv_expand.", "_project_conv.": "conv_pw.", "_bn2.": "bn2."}  # fmt: skip
_LUKEMELAS_IR = {"_expand_conv.": "conv_pw.", "_bn0.": "bn1.", "_depthwise_conv.": "conv_dw.", "_bn1.": "bn2.",
                 "_se_reduce.": "se.conv_reduce.", "_se_expand.": "se.conv_expand.",
                 "_project_conv.": "conv_pwl.", "_bn2.": "bn3."}  # fmt: skip


def lukemelas_efficientnet_to_timm(
    state: dict[str, torch.Tensor], model: nn.Module
) -> dict[str, torch.Tensor]:
    """``efficientnet_pytorch`` (lukemelas) keys -> timm EfficientNet keys.

    lukemelas numbers blocks flat (``_blocks.k``); timm nests them by stage (``blocks.s.i``), in the
    same order, so the k-th flat block is the k-th timm block. Expansion-free blocks (depthwise
    separable) name their layers differently from inverted-residual ones.
    """
    timm_blocks = [(f"blocks.{s}.{i}.", hasattr(block, "conv_pwl")) for s, stage in enumerate(model.blocks)
                   for i, block in enumerate(stage)]  # fmt: skip
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = re.match(r"_blocks\.(\d+)\.(.*)", key)
        if m:
            k, rest = int(m.group(1)), m.group(2)
            if k >= len(timm_blocks):
                out[key] = value
                continue
            prefix, inverted = timm_blocks[k]
            table = _LUKEMELAS_IR if inverted else _LUKEMELAS_DS
            for old, new in table.items():
                if rest.startswith(old):
                    out[prefix + new + rest[len(old) :]] = value
                    break
            else:
                out[key] = value
            continue
        for old, new in (("_conv_stem.", "conv_stem."), ("_bn0.", "bn1."), ("_conv_head.", "conv_head."),
                         ("_bn1.", "bn2.")):  # fmt: skip
            if key.startswith(old):
                out[new + key[len(old) :]] = value
                break
        else:
            out[key] = value
    return out


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"{n}." for n in names) + ("head.", "fc.", "classifier.")


def _timm_adapter(state, model, spec):
    # timm-format files; only the classifier (absent with num_classes=0) has to go.
    drop = () if spec is None else spec.drop_prefixes
    expected = _expected_keys(model)
    state = apply_prefixes(state, spec.strip_prefixes if spec else (), drop)
    return {k: v for k, v in state.items() if k in expected or not k.startswith(_classifier_prefixes(model))}


def _prefix_adapter(state, model, spec):
    return apply_prefixes(state, spec.strip_prefixes, spec.drop_prefixes)


def _hf_vit_adapter(state, model, spec):
    return hf_vit_to_timm(apply_prefixes(state, spec.strip_prefixes, ()), dinov2=False)


def _hf_dinov2_adapter(state, model, spec):
    return hf_vit_to_timm(apply_prefixes(state, spec.strip_prefixes, ()), dinov2=True)


def _lukemelas_adapter(state, model, spec):
    state = apply_prefixes(state, spec.strip_prefixes, spec.drop_prefixes)
    return lukemelas_efficientnet_to_timm(state, model)


def _swin_original_adapter(state, model, spec):
    from timm.models.swin_transformer import checkpoint_filter_fn

    state = apply_prefixes(state, spec.strip_prefixes, spec.drop_prefixes)
    return apply_prefixes(checkpoint_filter_fn(state, model), (), spec.drop_prefixes)


ADAPTERS: dict[str, Callable] = {
    "timm": _timm_adapter,
    "prefix": _prefix_adapter,
    "hf_vit": _hf_vit_adapter,
    "hf_dinov2": _hf_dinov2_adapter,
    "lukemelas_efficientnet": _lukemelas_adapter,
    "swin_original": _swin_original_adapter,
}


# ----------------------------------------------------------------------------- build hooks
def set_bn_eps(model: nn.Module, eps: float) -> nn.Module:
    """Set the epsilon of every BatchNorm (Keras uses 1.001e-5 where torch uses 1e-5)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eps = eps
    return model


def keras_resnet_strides(model: nn.Module) -> nn.Module:
    """Move each stage's downsampling stride from the 3x3 to the first 1x1 conv (Keras ResNet v1)."""
    for name in ("layer2", "layer3", "layer4"):
        block = getattr(model, name)[0]
        if block.conv2.stride != (1, 1):
            block.conv1.stride, block.conv2.stride = block.conv2.stride, (1, 1)
    return set_bn_eps(model, 1.001e-5)


def _no_stem_head_act(model: nn.Module) -> nn.Module:
    # MPCS replaces efficientnet_pytorch's ``_swish`` (used only after the stem and head BN) by Identity.
    model.bn1.act = nn.Identity()
    model.bn2.act = nn.Identity()
    return model


BUILD_HOOKS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "keras_resnet": keras_resnet_strides,
    "keras_densenet": lambda m: set_bn_eps(m, 1.001e-5),
    "no_stem_head_act": _no_stem_head_act,
}
