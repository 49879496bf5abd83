"""The installed version of skdfl, read from the package metadata (``pyproject.toml`` is the one source)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("skdfl")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
