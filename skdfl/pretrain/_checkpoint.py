"""Per-epoch training checkpoints: written atomically, read back as tensors only, tied to their run.

A checkpoint holds the encoder, projection head, optimiser and grad-scaler states, the per-epoch history and
a description of the run (parameters and data identity). Randomness needs no saving: every epoch reseeds
from ``(random_state, epoch)``, so a resumed run replays exactly what the uninterrupted one would have done.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from ..storage import atomic_write

__all__ = ["CHECKPOINT_NAME", "RunMismatchError", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_NAME = "pretrain_checkpoint.pt"
_FORMAT = "skdfl-pretrain-checkpoint/1"


class RunMismatchError(ValueError):
    """``checkpoint_dir`` holds the checkpoint of another run (other parameters or other data)."""


def save_checkpoint(directory: str | Path, *, run: dict, epoch: int, states: dict, history: list) -> Path:
    """Write the state after ``epoch`` completed epochs to ``directory / CHECKPOINT_NAME``."""
    payload = {
        "format": _FORMAT,
        "run": json.dumps(run, sort_keys=True),
        "epoch": int(epoch),
        "history": json.dumps(history),
        **states,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path = Path(directory) / CHECKPOINT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    # Atomic (temporary file + rename) and fsynced: a kill or a power cut leaves the previous epoch's file.
    atomic_write(path, buffer.getvalue(), fsync=True)
    return path


def load_checkpoint(directory: str | Path, *, run: dict) -> dict | None:
    """The checkpoint in ``directory`` (``None`` if there is none), checked to belong to ``run``.

    Read with ``weights_only=True``: a checkpoint cannot execute code.

    Raises
    ------
    RunMismatchError
        The checkpoint was written by a run with other parameters or other data; the message names them.
    """
    path = Path(directory) / CHECKPOINT_NAME
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise RunMismatchError(f"cannot read the pretraining checkpoint {path}: {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise RunMismatchError(f"{path} is not an skdfl pretraining checkpoint")
    saved = json.loads(payload["run"])
    expected = json.loads(json.dumps(run, sort_keys=True))  # same JSON normalisation (tuples -> lists)
    if saved != expected:
        differ = sorted(k for k in set(saved) | set(expected) if saved.get(k) != expected.get(k))
        detail = "; ".join(f"{k}: checkpoint {saved.get(k)!r}, now {expected.get(k)!r}" for k in differ)
        raise RunMismatchError(
            f"{path} belongs to another pretraining run ({detail}). Use another checkpoint_dir, or delete "
            "the file to start over"
        )
    payload["history"] = json.loads(payload["history"])
    return payload
