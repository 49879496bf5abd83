"""``skdfl backbones`` and ``skdfl fetch-weights``: the backbone zoo from the command line.

``skdfl.cli`` registers them with :func:`add_backbones_parser` and :func:`add_fetch_weights_parser`;
each sets ``func`` to a callable taking the parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["add_backbones_parser", "add_fetch_weights_parser", "backbones_command", "fetch_weights_command"]

_SHORT_COLUMNS = ["name", "architecture", "method", "pretraining_data", "medical", "embedding_dim", "pooling",
                  "weights", "aliases"]  # fmt: skip


def backbones_command(args: argparse.Namespace) -> int:
    """Print the backbone table; returns 0."""
    from .backbones import list_backbones, weights_dir

    medical = {"medical": True, "natural": False}.get(args.only)
    table = list_backbones(medical=medical, full=args.full)
    if not args.full and args.format == "table":
        table = table[_SHORT_COLUMNS]
    if args.format == "csv":
        table.to_csv(sys.stdout, index=False)
    elif args.format == "json":
        print(table.to_json(orient="records", indent=2, default_handler=str))
    elif args.format == "markdown":
        print(_markdown(table))
    else:
        with _wide_pandas():
            print(table.to_string(index=False))
        print(f"\nweights directory: {weights_dir()}  (SKDFL_WEIGHTS_DIR)")
    return 0


def _markdown(table) -> str:
    cells = [[str(v) for v in row] for row in table.itertuples(index=False)]
    header = "| " + " | ".join(table.columns) + " |"
    rule = "| " + " | ".join("---" for _ in table.columns) + " |"
    return "\n".join(
        [header, rule] + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    )


class _wide_pandas:
    def __enter__(self):
        import pandas as pd

        self._ctx = pd.option_context(
            "display.width", 250, "display.max_colwidth", 60, "display.max_rows", None
        )
        self._ctx.__enter__()

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def fetch_weights_command(args: argparse.Namespace) -> int:
    """Download each named backbone's weights into the weights directory and print their SHA-256.

    Returns 0 when every name was fetched (or already present), 1 otherwise.
    """
    from .backbones import fetch_weights

    if args.dir:
        os.environ["SKDFL_WEIGHTS_DIR"] = str(args.dir)
    status = 0
    for name in args.names:
        try:
            path, sha = fetch_weights(name, force=args.force)
        except Exception as err:  # report every name, keep going, fail at the end
            print(f"error: {name}: {err}", file=sys.stderr)
            status = 1
            continue
        print(f"{sha}  {path}")
    return status


def add_backbones_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``skdfl backbones`` on an ``argparse`` subparsers object."""
    parser = subparsers.add_parser(
        "backbones",
        help="list the backbone zoo",
        description="List the registered backbones (any timm model name works too).",
    )
    parser.add_argument(
        "--only", choices=("medical", "natural"), help="only medical or natural-image backbones"
    )
    parser.add_argument(
        "--full", action="store_true", help="all columns: sources, timm kwargs, adapters, notes"
    )
    parser.add_argument("--format", choices=("table", "csv", "markdown", "json"), default="table")
    parser.set_defaults(func=backbones_command)
    return parser


def add_fetch_weights_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``skdfl fetch-weights`` on an ``argparse`` subparsers object."""
    parser = subparsers.add_parser(
        "fetch-weights",
        help="download backbone weights into the weights directory",
        description="Download weights (online) into the weights directory, printing 'sha256  path', so "
        "the directory can be copied to an offline machine.",
    )
    parser.add_argument("names", nargs="+", metavar="NAME", help="registry name, alias or timm arch.tag")
    parser.add_argument(
        "--dir", help="weights directory (default: $SKDFL_WEIGHTS_DIR or ~/.cache/skdfl/weights)"
    )
    parser.add_argument("--force", action="store_true", help="download again even if the file exists")
    parser.set_defaults(func=fetch_weights_command)
    return parser
