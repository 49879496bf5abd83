"""``skdfl backbones`` and ``skdfl fetch-weights``: the backbone zoo of :mod:`skdfl.backbones`."""

from __future__ import annotations

import argparse
import os
import sys

__all__ = [
    "add_backbones_parser",
    "add_fetch_weights_parser",
    "run_backbones_command",
    "run_fetch_weights_command",
]

#: Columns of the default ``skdfl backbones`` table, which fits :data:`TABLE_WIDTH` characters; the free-text
#: ones are shortened (with "…") as much as needed, widest first.
_SHORT_COLUMNS = ["name", "embedding_dim", "medical", "method", "pretraining_data", "local"]
_SHORTENED = ("pretraining", "method")
TABLE_WIDTH = 100


def _local_weights(names) -> list[str]:
    """Path of each backbone's weights when they are already on this machine, else ``""``."""
    from ..backbones import get_spec
    from ..backbones.weights import locate_weights

    paths = []
    for name in names:
        try:
            found = locate_weights(get_spec(name))
        except Exception:  # a broken cache or package must not break the listing
            found = None
        paths.append("" if found is None else str(found))
    return paths


def _fit_width(table, width: int) -> str:
    """``table.to_string()`` with the free-text columns shortened until every line fits ``width``."""
    table = table.astype(str)
    limits = {c: int(table[c].str.len().max()) for c in _SHORTENED if c in table}

    def render():
        shown = table.copy()
        for c, limit in limits.items():
            shown[c] = shown[c].map(lambda v, n=limit: v if len(v) <= n else v[: max(n - 1, 0)] + "…")
        return shown.to_string(index=False)

    text = render()
    while max(map(len, text.splitlines())) > width and any(n > 6 for n in limits.values()):
        widest = max(limits, key=limits.get)
        limits[widest] -= 1
        text = render()
    return text


def run_backbones_command(args: argparse.Namespace) -> int:
    """Print the backbone table; returns 0.

    The default table fits :data:`TABLE_WIDTH` columns and says which weights are on this machine
    (``local``); ``--full`` (or any ``--format`` other than ``table``) gives every column, with ``local``
    holding the path of the weights file found (empty when absent).
    """
    from ..backbones import list_backbones, weights_dir

    medical = {"medical": True, "natural": False}.get(args.only)
    table = list_backbones(medical=medical, full=args.full)
    local = _local_weights(table["name"])
    if args.format == "table" and not args.full:
        table = table.assign(local=["yes" if path else "-" for path in local])[_SHORT_COLUMNS]
        table = table.rename(columns={"embedding_dim": "dim", "pretraining_data": "pretraining"})
        print(_fit_width(table, TABLE_WIDTH))
        print("\nlocal: weights already on this machine (--full: every column)")
        print(f"weights directory: {weights_dir()}  (SKDFL_WEIGHTS_DIR)")
        return 0
    table = table.assign(local=local)
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


def run_fetch_weights_command(args: argparse.Namespace) -> int:
    """Download each named backbone's weights into the weights directory and print their SHA-256.

    Returns 0 when every name was fetched (or already present), 1 otherwise.
    """
    from ..backbones import fetch_weights

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
        "--full", action="store_true",
        help=f"all columns (sources, timm kwargs, adapters, notes) instead of a {TABLE_WIDTH}-column table",
    )
    parser.add_argument("--format", choices=("table", "csv", "markdown", "json"), default="table")
    parser.set_defaults(func=run_backbones_command)
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
    parser.set_defaults(func=run_fetch_weights_command)
    return parser
