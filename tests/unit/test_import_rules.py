"""Who may import whom: the layers of pbkfs/ and the worker process, read from the source.

Every .py under pbkfs/ and workers/ is parsed with `ast`; every import counts, at module
level or inside a function, `import x`, `from x import y`, `from pbkfs import mod` and
relative imports alike. The layers, lowest first:

    codecs < storage < catalog < walarchive < view < diff < recovery < ipc < fs < mount < cli

A module imports its own layer and the layers below it. The root modules (pbkfs/*.py:
errors, config, proc, logsetup, ...) sit below every layer: everybody may import them,
and they import only each other. The worker process (workers/) is a leaf of the lower
half: pbkfs.ipc.protocol, diff, view and what lies below, never trio or pyfuse3.
What a process really loads is checked by running it: tests/core/test_import_rules.py.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.env import REPO

LAYERS = ("codecs", "storage", "catalog", "walarchive", "view", "diff", "recovery", "ipc", "fs",
          "mount", "cli")
RANK = {name: i for i, name in enumerate(LAYERS)}
ROOT = "root"  # pbkfs/*.py and the package `pbkfs` itself
FRONTEND_LIBS = ("trio", "pyfuse3")
# what the worker process may use of pbkfs: these layers whole, and the protocol
WORKER_LAYERS = {ROOT, "codecs", "storage", "catalog", "walarchive", "view", "diff"}
WORKER_MODULES = {"pbkfs.ipc.protocol"}
NO_FRONTEND = ("catalog", "view", "codecs", "storage", "walarchive", "diff")  # rule (b)


@dataclass(frozen=True)
class Import:
    importer: str  # dotted name of the importing module
    path: Path
    line: int
    target: str  # dotted name of the module imported (a name's module for `from m import name`)
    runtime: bool  # executed when the importer is imported (module level, not TYPE_CHECKING)

    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}: {self.importer} imports {self.target}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str, repo: Path = REPO) -> bool:
    """`name` is a module or package of this checkout (not a name defined inside one)."""
    base = repo.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Collector(ast.NodeVisitor):
    def __init__(self, importer: str, is_package: bool, path: Path, repo: Path) -> None:
        self.importer = importer
        self.package = importer if is_package else importer.rpartition(".")[0]
        self.path = path
        self.repo = repo
        self.depth = 0  # inside a function: imported when it runs, not at import time
        self.type_only = 0
        self.found: list[Import] = []

    def add(self, node: ast.stmt, target: str) -> None:
        runtime = self.depth == 0 and self.type_only == 0
        self.found.append(Import(self.importer, self.path, node.lineno, target, runtime))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.add(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            parts = self.package.split(".")
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join(parts + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            self.add(node, sub if alias.name != "*" and is_module(sub, self.repo) else base)

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self.type_only += 1
            for child in node.body:
                self.visit(child)
            self.type_only -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def _function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function
    visit_Lambda = _function


def imports_in(source: str, importer: str, path: Path, is_package: bool = False,
               repo: Path = REPO) -> list[Import]:
    collector = _Collector(importer, is_package, path, repo)
    collector.visit(ast.parse(source, str(path)))
    return collector.found


def sources(*packages: str) -> Iterator[Path]:
    for package in packages:
        yield from sorted((REPO / package).rglob("*.py"))


def all_imports(*packages: str) -> list[Import]:
    out = []
    for path in sources(*packages):
        out += imports_in(path.read_text(), module_name(path), path, path.name == "__init__.py")
    return out


def layer_of(module: str) -> str | None:
    """The layer of a pbkfs module (ROOT for pbkfs/*.py), None outside pbkfs."""
    parts = module.split(".")
    if parts[0] != "pbkfs":
        return None
    if len(parts) == 1 or not (REPO / "pbkfs" / parts[1]).is_dir():
        return ROOT
    return parts[1]


def is_under(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


PBKFS = all_imports("pbkfs")
WORKERS = all_imports("workers")


def report(violations: list[str]) -> None:
    assert not violations, f"{len(violations)} import(s) break the rule:\n" + "\n".join(
        violations)


# -- the checker itself --------------------------------------------------------------------


def test_the_checker_sees_every_form_of_import(tmp_path: Path) -> None:
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    for name in ("pkg/__init__.py", "pkg/sub/__init__.py", "pkg/sub/mod.py", "pkg/other.py"):
        (tmp_path / name).write_text("")
    source = (
        "import trio\n"
        "import pkg.other as o\n"
        "from pkg.sub import mod, NAME\n"
        "from .. import other\n"
        "from .mod import thing\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from pkg import typed\n"
        "def f():\n"
        "    import pyfuse3\n"
        "    from pkg import sub\n"
        "class C:\n"
        "    async def g(self):\n"
        "        from pkg.sub.mod import x\n"
    )
    got = [(i.target, i.runtime, i.line) for i in
           imports_in(source, "pkg.sub.mod", tmp_path / "pkg/sub/mod.py", repo=tmp_path)]
    assert got == [
        ("trio", True, 1), ("pkg.other", True, 2), ("pkg.sub.mod", True, 3),
        ("pkg.sub", True, 3), ("pkg.other", True, 4), ("pkg.sub.mod", True, 5),
        ("typing", True, 6), ("pkg", False, 8), ("pyfuse3", False, 10), ("pkg.sub", False, 11),
        ("pkg.sub.mod", False, 14),
    ]


def test_every_source_is_read() -> None:
    assert len(list(sources("pbkfs"))) > 50 and len(list(sources("workers"))) >= 3
    targets = {(i.importer, i.target) for i in PBKFS + WORKERS}
    assert ("pbkfs.fs.vfs", "trio") in targets  # module level
    assert ("pbkfs.cli.mount", "pbkfs.mount.daemon") in targets  # `from pbkfs.mount import daemon`
    assert ("workers.loop", "pbkfs.ipc.protocol") in targets


def test_every_package_of_pbkfs_is_a_known_layer() -> None:
    packages = sorted(p.name for p in (REPO / "pbkfs").iterdir() if (p / "__init__.py").is_file())
    assert [p for p in packages if p not in LAYERS] == [], "a new layer: place it in LAYERS"


# -- the rules -----------------------------------------------------------------------------


def test_workers_import_only_the_worker_side_of_pbkfs() -> None:
    """(a) the worker process: pbkfs.ipc.protocol, diff, view and the layers below; never
    trio, pyfuse3, the router, fs, mount or cli."""
    violations = []
    for imp in WORKERS:
        layer = layer_of(imp.target)
        if is_under(imp.target, *FRONTEND_LIBS):
            violations.append(f"{imp.where()}: a worker never loads {imp.target.split('.')[0]}")
        elif layer is not None and layer not in WORKER_LAYERS and imp.target not in WORKER_MODULES:
            violations.append(f"{imp.where()}: workers may use of pbkfs only ipc.protocol, "
                              f"{', '.join(sorted(WORKER_LAYERS - {ROOT}))} and the root modules")
    report(violations)


def test_the_reading_layers_never_import_the_frontend() -> None:
    """(b) catalog, view, codecs, walarchive and diff never import fs, ipc, mount, cli, trio
    or pyfuse3."""
    frontend = ("pbkfs.fs", "pbkfs.ipc", "pbkfs.mount", "pbkfs.cli", *FRONTEND_LIBS)
    report([f"{imp.where()}: {layer_of(imp.importer)} is below the frontend"
            for imp in PBKFS
            if layer_of(imp.importer) in NO_FRONTEND and is_under(imp.target, *frontend)])


def test_the_file_system_core_never_imports_pyfuse3() -> None:
    """(c) pbkfs.fs is the FUSE-free core: no pyfuse3, no mount, no cli."""
    report([f"{imp.where()}: pbkfs.fs must work without FUSE"
            for imp in PBKFS
            if layer_of(imp.importer) == "fs"
            and is_under(imp.target, "pyfuse3", "pbkfs.mount", "pbkfs.cli")])


def test_each_layer_imports_only_itself_and_the_layers_below() -> None:
    """(d) codecs < catalog < walarchive < view < diff < recovery < ipc < fs < mount < cli."""
    violations = []
    for imp in PBKFS:
        mine, theirs = layer_of(imp.importer), layer_of(imp.target)
        if theirs is None or theirs == ROOT or mine == ROOT:
            continue
        if theirs not in RANK or mine not in RANK:
            violations.append(f"{imp.where()}: unknown layer {theirs if mine in RANK else mine}")
        elif RANK[theirs] > RANK[mine]:
            violations.append(f"{imp.where()}: {theirs} is above {mine}")
    report(violations)


def test_root_modules_import_only_root_modules() -> None:
    """(d) errors, config, proc, logsetup, ... are importable by every layer and by the
    worker, so they import no layer (and neither trio nor pyfuse3)."""
    violations = []
    for imp in PBKFS:
        if layer_of(imp.importer) != ROOT:
            continue
        theirs = layer_of(imp.target)
        if theirs not in (None, ROOT):
            violations.append(f"{imp.where()}: a root module imports the {theirs} layer")
        elif is_under(imp.target, *FRONTEND_LIBS):
            violations.append(f"{imp.where()}: a root module imports {imp.target}")
    report(violations)


def test_pbkfs_never_imports_workers_or_tools() -> None:
    """(e) the package stands alone: workers/ and tools/ use pbkfs, never the reverse."""
    report([f"{imp.where()}: pbkfs must not depend on {imp.target.split('.')[0]}/"
            for imp in PBKFS if is_under(imp.target, "workers", "tools")])


def loads(module: str, graph: dict[str, list[Import]]) -> dict[str, list[str]]:
    """Every module of this checkout importing `module` loads, with the chain that loads it:
    module-level imports only, and each module's parent packages."""
    chains: dict[str, list[str]] = {module: [module]}
    todo = [module]
    while todo:
        current = todo.pop()
        for imp in graph.get(current, []):
            if not imp.runtime:
                continue
            parts = imp.target.split(".")
            for n in range(1, len(parts) + 1):
                name = ".".join(parts[:n])
                if name not in chains:
                    chains[name] = [*chains[current], name]
                    if name in graph:
                        todo.append(name)
    return chains


@pytest.mark.parametrize("worker", sorted({i.importer for i in WORKERS}))
def test_a_worker_loads_nothing_of_the_frontend(worker: str) -> None:
    """(a), followed through pbkfs: what importing a worker module pulls in at import time."""
    graph: dict[str, list[Import]] = {}
    for imp in PBKFS + WORKERS:
        graph.setdefault(imp.importer, []).append(imp)
    for path in sources("pbkfs", "workers"):
        graph.setdefault(module_name(path), [])
    forbidden = ("trio", "pyfuse3", "pbkfs.ipc.router", "pbkfs.fs", "pbkfs.mount", "pbkfs.cli")
    chains = loads(worker, graph)
    report([" -> ".join(chain) for name, chain in sorted(chains.items())
            if is_under(name, *forbidden)])
