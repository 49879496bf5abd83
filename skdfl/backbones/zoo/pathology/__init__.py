"""Histopathology backbones, one file per provider: self-supervised seeds and foundation models."""
