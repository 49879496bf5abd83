"""The backbone zoo: one file per family (ImageNet, Keras) or histopathology provider.

Each file holds a tuple ``SPECS`` of :class:`~skdfl.backbones.BackboneSpec` and nothing else; importing
this package registers them, in the order of :data:`FAMILIES` (the order of ``list_backbones()``).
To add a backbone, add a spec to its provider's file (or a new file listed in :data:`FAMILIES`).
"""

from ..registry import register_backbone
from . import imagenet, keras
from .pathology import bioptimus, ciga, ctranspath, gigapath, kaiko, lunit, mahmood, mpcs, owkin, paige

FAMILIES = (imagenet, keras, mahmood, ciga, mpcs, owkin, paige, bioptimus, gigapath, kaiko, lunit, ctranspath)

for _family in FAMILIES:
    for _spec in _family.SPECS:
        register_backbone(_spec)
