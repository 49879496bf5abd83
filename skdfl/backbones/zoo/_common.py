"""Values shared by several zoo files."""

#: mean = std = 0.5 per channel, i.e. inputs scaled to [-1, 1] (DINO / kaiko / Chen et al. repositories).
HALF = (0.5, 0.5, 0.5)

#: Keys of self-supervised training heads (projection MLPs, prototypes, classifiers) that the backbone lacks.
SSL_HEADS = ("fc.", "projection_head.", "prototypes.", "projector.", "mlp.", "head.", "bn.")
