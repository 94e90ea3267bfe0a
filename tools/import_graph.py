"""Check the import graph of the normrnn package: no circle, no import up the declared layers, no private name
taken from another module.

Every ``import``/``from ... import`` in every module of ``src/normrnn`` counts, at module level or inside a
function (a lazy import is still a dependency). ``from pkg import name`` where ``pkg.name`` is a module counts as
an import of that module. The layers below run from the bottom up: a module may import modules of its own layer
or of lower ones, never of a higher one. Within the library, modules of one layer must not form a circle.

Run: ``python tools/import_graph.py [SRC]`` (prints the problems, exit status 1 if any);
``tests/core/test_layout.py`` runs it.
"""
from __future__ import annotations

import ast
import sys
from fnmatch import fnmatch
from pathlib import Path
from typing import Iterator

# The source folder (the command line's argument when run as a script; never sys.argv on import: under pytest that
# held pytest's arguments, the check then read no module and passed whatever the tree held).
ROOT = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "normrnn"

# Bottom to top. A pattern ending in ".*" takes a package and everything in it.
LAYERS: list[tuple[str, ...]] = [
    # the library: the math, the norms, the options, the inputs
    ("normrnn.tracing", "normrnn.moments", "normrnn.checks"),
    ("normrnn.norms",),
    ("normrnn.options",),
    ("normrnn.cells",),
    ("normrnn.reference", "normrnn.sync"),
    # the fused backend, engines first
    ("normrnn.fused.contract", "normrnn.fused.triton_kernels", "normrnn.fused.cuda_graphs"),
    ("normrnn.fused.torch_engine", "normrnn.fused.native", "normrnn.fused.triton_engine"),
    ("normrnn.fused.select", "normrnn.fused.loop_args", "normrnn.fused.autograd"),
    ("normrnn.fused.input_term", "normrnn.fused.stream"),
    ("normrnn.fused.run",),
    ("normrnn.fused",),
    # running a sequence, and the package face
    ("normrnn.layers",),
    ("normrnn.convert", "normrnn.export"),
    ("normrnn",),
    # tools and the application
    ("normrnn.multiproc", "normrnn.data", "normrnn.data.*"),
    ("normrnn.bench", "normrnn.bench.*", "normrnn.train", "normrnn.train.*"),
    ("normrnn.study", "normrnn.study.*"),
    ("normrnn.cli", "normrnn.__main__"),
]


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    if not found:  # (a check that reads nothing would pass)
        raise FileNotFoundError(f"no {PACKAGE} modules under {ROOT}")
    return found


def layer_of(name: str) -> int:
    for i, patterns in enumerate(LAYERS):
        if any(fnmatch(name, p) for p in patterns):
            return i
    raise KeyError(f"{name} is in no layer of {Path(__file__).name}: add it")


def imports(name: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[str, int, str]]:
    """(imported module, line, private name or '') for every import of a package module in ``name``, and for
    every private attribute read through a name bound to another module (``from . import native`` then
    ``native._build``)."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), str(path))
    bound: dict[str, str] = {}  # local name -> package module
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    if alias.asname:
                        bound[alias.asname] = alias.name
                    yield alias.name, node.lineno, ""
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in known:
                    bound[alias.asname or alias.name] = sub
                    yield sub, node.lineno, ""
                else:
                    yield target, node.lineno, alias.name if _private(alias.name) else ""
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound \
                and _private(node.attr):
            yield bound[node.value.id], node.lineno, node.attr


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def problems() -> list[str]:
    known = modules()
    found = []
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        mine = layer_of(name)
        for target, line, private in imports(name, path, known):
            if target not in known:
                found.append(f"{name}:{line}: imports {target}, which is not a module of the package")
                continue
            if private and target != name:
                found.append(f"{name}:{line}: imports the private name {private} of {target}")
            if target == name:
                continue
            graph[name].add(target)
            # A package's face may import its own modules; everything else looks down or sideways.
            if layer_of(target) > mine and not target.startswith(name + "."):
                found.append(f"{name}:{line}: imports {target}, a higher layer ({LAYERS[layer_of(target)][0]} "
                             f"above {LAYERS[mine][0]})")
    found += [f"import circle among: {', '.join(c)}" for c in cycles(graph)]
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The modules of each strongly connected component of more than one module (Tarjan): each holds a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main(argv: list[str]) -> int:
    global ROOT
    if argv:
        ROOT = Path(argv[0])
    found = problems()
    for p in found:
        print(p)
    print(f"{len(modules())} modules, {len(found)} problems")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
