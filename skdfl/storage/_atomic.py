"""Atomic file writes: the one place where skdfl replaces a file on disk.

Readers of the cache, of a store, of a metadata file or of downloaded weights must never see half a
file, whether the writer was killed or another process writes the same name at the same time. Every write
goes to a temporary file in the target's folder and is renamed over the target (``os.replace``: atomic on
POSIX, NFS included); the result gets the permissions ``open()`` would have given it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Every temporary file skdfl writes starts with this: stores and caches recognise them as their own.
TMP_PREFIX = ".tmp-"


def _current_umask() -> int:
    # Linux reports the umask in /proc without changing it; elsewhere os.umask can only be read by setting
    # it, which is racy against other threads for the instant it takes.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The permissions ``open(path, "w")`` gives a new file now: ``0o666`` less the current umask."""
    return 0o666 & ~_current_umask()


def error_naming(exc: OSError, path: str | os.PathLike, doing: str) -> OSError:
    """``exc`` (same class and errno) with ``path`` as its filename and ``doing`` in its message.

    ``write``/``fsync`` on a full disk raise ``[Errno 28] No space left on device`` with no filename; the
    user must learn which file (and so which disk) it was.
    """
    reason = exc.strerror or str(exc)
    if exc.errno is None:
        return OSError(f"{reason} ({doing}): {os.fspath(path)}")
    # OSError(errno, ...) picks the subclass by errno (PermissionError, FileNotFoundError...) itself.
    return OSError(exc.errno, f"{reason} ({doing})", os.fspath(path))


def atomic_write(path: str | os.PathLike, data: bytes, *, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, then ``os.replace``.

    The file gets the permissions an ordinary ``open(path, "w")`` would (``0o666`` less the umask), not the
    private ``0o600`` of a temporary file, so a cache or store shared by a group stays readable by it.

    Parameters
    ----------
    path : str or path-like
        Target file; its folder must exist.
    data : bytes
        The whole new content.
    fsync : bool, default=False
        Make the content durable before the rename (power-loss safety; not needed against a killed
        process).
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=path.suffix, dir=path.parent)
    except OSError as exc:
        raise error_naming(exc, path, "creating a temporary file beside it") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):  # POSIX; Windows has no permission bits to fix
                os.fchmod(f.fileno(), default_file_mode())
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise error_naming(exc, path, "writing") from exc
        raise


@contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``dest``, moved onto ``dest`` when the ``with`` block succeeds.

    For writers that want a path rather than bytes (``torch.save``, a download, ``np.save``). The folder of
    ``dest`` is created. On error the temporary file is removed and ``dest`` is untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f"{TMP_PREFIX}{dest.name}.", suffix=".part")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_json(path: str | os.PathLike, obj, *, fsync: bool = False) -> None:
    """:func:`atomic_write` of ``obj`` as indented, key-sorted JSON (stable bytes for equal objects)."""
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode(), fsync=fsync)


__all__ = [
    "TMP_PREFIX",
    "atomic_path",
    "atomic_write",
    "atomic_write_json",
    "default_file_mode",
    "error_naming",
]
