"""The package's layout stays a house with clear rooms: checked on the source, by walking its AST.

* no import cycle between skdfl modules, counting imports inside functions (they run, later) but not
  ``if TYPE_CHECKING:`` blocks (they never run); importing ``skdfl.a.b`` from outside ``skdfl.a`` also
  runs ``skdfl/a/__init__.py``, so that is an edge to ``skdfl.a`` too;
* no import of the package root from inside the package (``from skdfl import X``, ``from . import
  __version__``): the root imports everything, so such an import runs back up (scripts such as the
  benchmarks are users and import from the root);
* no module imports another module's underscore-prefixed name, or reaches one as an attribute of a module it
  imported (a public name of a private module, e.g. ``from .._device import resolve_device``, is fine);
* nothing outside ``skdfl/embedder.py`` calls the embedder's private extraction methods: cache, store, Dask
  and benchmarks go through the public protocol (``BackboneEmbedder.embed_rows``).

The same rules (except the cycle one) hold in ``benchmarks/``, which must use only public API.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "skdfl"
# Private extraction methods of BackboneEmbedder: the old ones that four modules used to call, and today's.
EMBEDDER_PRIVATE = {"_embed", "_check_sources", "_dataset", "_embed_views", "_embed_cached", "_view_dataset"}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def discover(package_dir: Path, package: str) -> dict[str, Path]:
    """Module name -> file, for every ``.py`` file of the package."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join([package, *parts])] = path
    return modules


@dataclass
class Report:
    edges: dict[str, set[str]] = field(default_factory=dict)
    root_imports: list[str] = field(default_factory=list)
    private_imports: list[str] = field(default_factory=list)
    private_calls: list[str] = field(default_factory=list)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` blocks."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else None
            if name == "TYPE_CHECKING":
                for child in node.body:
                    skip.update(id(n) for n in ast.walk(child))
    return skip


def analyse(files: dict[str, Path], modules: set[str], package: str, report: Report, *, base: Path) -> None:
    """Record the import edges and rule violations of ``files`` (module name -> path) into ``report``.

    ``modules`` are the importable module names of the package; ``files`` may also hold scripts outside it
    (benchmarks), named by their path. Messages name files relative to ``base``.
    """
    for name, path in files.items():
        _analyse_file(name, path, modules, package, report, path.relative_to(base).as_posix())


def _analyse_file(name: str, path: Path, modules: set[str], package: str, report: Report, where: str) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    inside = name in modules
    skip = _type_checking_nodes(tree)
    edges = report.edges.setdefault(name, set()) if inside else set()
    module_aliases: dict[str, str] = {}  # local name -> package module it is bound to

    def add_edge(target: str, line: int) -> None:
        if not inside:
            return  # scripts are users: `from skdfl import X` is what they should write
        if target == package:
            report.root_imports.append(f"{where}:{line} imports the package root {package!r}")
            return
        parts = target.split(".")
        # Importing a.b.c runs the __init__ of every package on the way, unless we are inside it.
        for k in range(2, len(parts) + 1):
            ancestor = ".".join(parts[:k])
            if ancestor in modules and ancestor != name and not name.startswith(ancestor + "."):
                edges.add(ancestor)

    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == package or alias.name.startswith(package + "."):
                    add_edge(alias.name, line)
                    if alias.asname:
                        module_aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if not inside:
                    continue
                anchor = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                target = ".".join(anchor + ([node.module] if node.module else []))
            else:
                target = node.module or ""
                if not (target == package or target.startswith(package + ".")):
                    continue
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                if submodule in modules:
                    add_edge(submodule, line)
                    module_aliases[alias.asname or alias.name] = submodule
                    continue
                add_edge(target, line)
                if target != package and target != name and _is_private(alias.name):
                    report.private_imports.append(
                        f"{where}:{line} imports the private name {alias.name!r} from {target}"
                    )
        elif isinstance(node, ast.Attribute) and _is_private(node.attr):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in module_aliases and module_aliases[owner.id] != name:
                report.private_imports.append(
                    f"{where}:{line} uses the private name {node.attr!r} of {module_aliases[owner.id]}"
                )
            if node.attr in EMBEDDER_PRIVATE and name != f"{package}.embedder":
                report.private_calls.append(f"{where}:{line} uses the embedder's private .{node.attr}")


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (or a self-loop), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges.get(v, ()):
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return cycles


def check(package_dir: Path, package: str, extra_files: dict[str, Path] | None = None) -> tuple[Report, list[list[str]]]:
    modules = discover(package_dir, package)
    report = Report()
    analyse(modules, set(modules), package, report, base=package_dir.parent)
    if extra_files:
        analyse(extra_files, set(modules), package, report, base=package_dir.parent)
    return report, find_cycles(report.edges)


# --------------------------------------------------------------------------------------- the package
@pytest.fixture(scope="module")
def package_report():
    benchmarks = {f"benchmarks/{p.name}": p for p in sorted((ROOT / "benchmarks").glob("*.py"))}
    return check(ROOT / PACKAGE, PACKAGE, benchmarks)


def test_no_import_cycle(package_report):
    report, cycles = package_report
    assert len(report.edges) > 20  # the walk found the package
    assert not cycles, "import cycles between skdfl modules:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_import_of_the_package_root_from_inside(package_report):
    report, _ = package_report
    assert not report.root_imports, "\n".join(report.root_imports)


def test_no_module_uses_another_modules_private_names(package_report):
    report, _ = package_report
    assert not report.private_imports, "\n".join(report.private_imports)


def test_only_the_embedder_touches_its_private_extraction_methods(package_report):
    report, _ = package_report
    assert not report.private_calls, "\n".join(report.private_calls)


def test_embedder_offers_the_public_extraction_protocol():
    from skdfl import BackboneEmbedder

    for method in ("embed_rows", "check_sources", "view_dataset", "embedding_signature"):
        assert callable(getattr(BackboneEmbedder, method)) and getattr(BackboneEmbedder, method).__doc__


# ----------------------------------------------------------------------- the checker itself can fail
def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_checker_catches_every_kind_of_violation(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "from .a import A\n__version__ = '1'\n",
        "pkg/a.py": "from .b import B\nA = 1\n",
        "pkg/b.py": "def f():\n    from .a import A  # lazy, still a cycle\nB = 2\n",
        "pkg/c.py": "from . import __version__\nfrom .a import _hidden\n",
        "pkg/d.py": "from ._priv import public\nfrom . import _priv\nx = _priv._secret\n",
        "pkg/_priv.py": "public = 1\n_secret = 2\n",
        "pkg/embedder.py": "class E:\n    def t(self):\n        return self._embed(1)\n",
        "pkg/store.py": "def run(e):\n    e._check_sources({})\n    return e._dataset({}, [])\n",
        "pkg/sub/__init__.py": "from ._x import y\n",
        "pkg/sub/_x.py": "from . import _z\ny = _z.w\n",
        "pkg/sub/_z.py": "from ..e import q\nw = 1\n",
        "pkg/e.py": "from .sub._x import y\nq = 1\n",
        "pkg/ok.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .ok2 import T\n",
        "pkg/ok2.py": "from .ok import x\n",
        "bench.py": "from pkg import A\nfrom pkg.a import _hidden\nimport pkg.embedder as m\nm.E()._embed(2)\n",
    })  # fmt: skip
    report, cycles = check(tmp_path / "pkg", "pkg", {"bench.py": tmp_path / "bench.py"})
    assert sorted(cycles) == [["pkg.a", "pkg.b"], ["pkg.e", "pkg.sub", "pkg.sub._x", "pkg.sub._z"]]
    assert [r.split(":")[0] for r in report.root_imports] == ["pkg/c.py"]  # bench.py is a user: it may
    private = "\n".join(report.private_imports)
    assert "'_hidden' from pkg.a" in private and "'_secret' of pkg._priv" in private
    assert "'public'" not in private and "_z" not in private  # public name of a private module; a module
    assert len(report.private_imports) == 3  # c.py, d.py, bench.py
    calls = sorted((r.split(":")[0], r.rsplit(".", 1)[-1]) for r in report.private_calls)
    assert calls == [("bench.py", "_embed"), ("pkg/store.py", "_check_sources"), ("pkg/store.py", "_dataset")]
