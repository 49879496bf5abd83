"""The ``skdfl`` parser, its command table, and :func:`main`."""

from __future__ import annotations

import argparse
import sys

from .._version import __version__
from ._backbones import add_backbones_parser, add_fetch_weights_parser
from ._demo import add_demo_parser
from ._embed import add_embed_parser
from ._heatmap import add_heatmap_parser
from ._pretrain import add_pretrain_parser
from ._select import add_select_parser
from ._tile import add_tile_parser

__all__ = ["COMMANDS", "build_parser", "main"]

#: One entry per sub-command, in ``skdfl --help`` order: a function that registers it on an ``argparse``
#: subparsers object and sets ``func`` (parsed arguments -> exit code). A new command is a module
#: ``skdfl/cli/_<name>.py`` with such a function, plus one line here.
COMMANDS = (
    add_demo_parser,
    add_backbones_parser,
    add_fetch_weights_parser,
    add_select_parser,
    add_embed_parser,
    add_tile_parser,
    add_heatmap_parser,
    add_pretrain_parser,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``skdfl`` argument parser with every command of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="skdfl", description="Deep Feature Learning for histopathology, in scikit-learn."
    )
    parser.add_argument("--version", action="version", version=f"skdfl {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


def main(argv=None) -> int:
    """Run the ``skdfl`` command line; returns the exit code.

    A data or usage error raised by a command (``FileNotFoundError``, ``FileExistsError``, ``ValueError``,
    ``RuntimeError``) is printed as ``skdfl <command>: error: ...`` on stderr with exit code 2, without a traceback.
    """
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError) as exc:
        print(f"skdfl {args.command}: error: {exc}", file=sys.stderr)
        return 2
