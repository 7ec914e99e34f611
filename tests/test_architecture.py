"""The import graph of e3elastic, read from the source: no cycles, and data flows one way.

Stages, lowest first (a module may import its own stage and the stages its row allows):

* ``toolkit``: the numpy tensor toolkit (Voigt, Cartesian, irreps, moduli); nothing of
  e3elastic but the error base class, and no JAX;
* ``core``: frozen settings, JAX runtime settings, errors, atomic files; nothing else;
* ``data``: readers, datasets, crystal graphs and padded batches; no network;
* ``network`` (``e3elastic.network``): the linen modules and the numpy interface to them;
* ``inference`` (``e3elastic.inference``): bundles, compiled programs, ``load_model``/``predict``;
  no training module and no optax, directly or through anything they import;
* ``training`` (``e3elastic.training``): the loop, steps, plan, preparation, run folders, orbax
  checkpoints (which write the inference bundles), evaluation (which loads a bundle) and
  metrics;
* ``application``: the command line, figures and ``doctor``, free to import any stage.

Imports inside functions count: they are deferred, not absent. Every module must be given a
stage here, so a new module is placed on purpose.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "e3elastic"
ROOT = "e3elastic"
#: The one name modules may take from the root package (``e3elastic/__init__.py``), whose own
#: imports of ``inference`` are the lazy public facade (``e3elastic.predict``).
ROOT_NAMES = {"__version__"}

STAGES: dict[str, set[str]] = {
    "toolkit": {"voigt", "moduli", "tensors"},
    "core": {"config", "runtime", "errors", "files"},
    "data": {"data", "graph", "examples"},
    "network": {"network"},
    "inference": {"inference"},
    "training": {"training"},
    "application": {"cli", "plots", "doctor", "__main__"},
}
ALLOWED: dict[str, set[str]] = {
    "toolkit": {"toolkit"},
    "core": {"core"},
    "data": {"toolkit", "core", "data"},
    "network": {"toolkit", "core", "data", "network"},
    "inference": {"toolkit", "core", "data", "network", "inference"},
    "training": {"toolkit", "core", "data", "network", "inference", "training"},
    "application": set(STAGES),
}
#: Single modules a stage may import beyond its row.
EXTRA_ALLOWED = {"toolkit": {"e3elastic.errors"}}
JAX_FAMILY = {"jax", "jaxlib", "flax", "e3nn_jax", "optax", "orbax"}


def module_files() -> dict[str, Path]:
    """``{"e3elastic.data.dataset": path, "e3elastic.data": .../data/__init__.py, ...}``."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _base(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` names (relative levels resolved)."""
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """``(internal, external)``: for each module, the e3elastic modules it imports and the
    top-level names of the other packages it imports, anywhere in the file."""
    files = module_files()
    internal: dict[str, set[str]] = {m: set() for m in files}
    external: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _base(module, path, node)
                targets = []
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    if sub in files:
                        targets.append(sub)
                    elif base == ROOT and alias.name in ROOT_NAMES:
                        targets.append(f"{ROOT}.{alias.name}")
                    else:
                        targets.append(base)
            else:
                continue
            for target in targets:
                if target == ROOT or target.startswith(ROOT + "."):
                    # `import e3elastic.a.b` names the module a.b; `from e3elastic import
                    # __version__` names the root's version, not the facade behind it
                    while target not in files and target.removeprefix(ROOT + ".") not in ROOT_NAMES:
                        target = target.rpartition(".")[0]
                    if target != module:
                        internal[module].add(target)
                elif target and not target.startswith("__future__"):
                    external[module].add(target.split(".")[0])
    return internal, external


def stage_of(module: str) -> str | None:
    """The stage of ``e3elastic.x`` or ``e3elastic.x.y`` (by its top-level name ``x``)."""
    top = module.split(".")[1] if "." in module else None
    for stage, names in STAGES.items():
        if top in names:
            return stage
    return None


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def _edges_in(internal: dict[str, set[str]], component: list[str]) -> list[str]:
    return sorted(f"{a} -> {b}" for a in component for b in internal[a] if b in component)


def test_the_graph_is_read_from_the_source(graph):
    internal, external = graph
    # known edges, relative and absolute, at module level and inside functions
    assert "e3elastic.tensors" in internal["e3elastic.inference.predictor"]
    assert "e3elastic.graph" in internal["e3elastic.inference.predictor"]
    assert "e3elastic.network.model" in internal["e3elastic.inference.bundle"]  # inside a function
    assert "e3elastic.data.records" in internal["e3elastic.data.dataset"]
    assert "e3elastic.files" in internal["e3elastic.graph.cache"]  # `from ..files import`
    assert "e3elastic.cli.predict" in internal["e3elastic.cli"]  # `from . import predict`
    assert "optax" in external["e3elastic.training.steps"]


def test_no_import_cycles(graph):
    internal, _ = graph
    found = cycles(internal)
    assert not found, "import cycles:\n" + "\n".join(
        "  " + ", ".join(_edges_in(internal, c)) for c in found
    )


def test_the_root_package_imports_nothing_on_import():
    """``from e3elastic import __version__`` is safe anywhere: the root package's only
    imports are deferred to ``e3elastic.predict`` / ``e3elastic.load_model``."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    top_level = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    assert [n for n in top_level if not (getattr(n, "module", "") == "__future__")] == []


def test_every_module_has_a_stage(graph):
    internal, _ = graph
    loose = sorted(m for m in internal if m != ROOT and stage_of(m) is None)
    assert not loose, f"give these modules a stage in tests/test_architecture.py: {loose}"


def test_no_stage_imports_a_higher_one(graph):
    internal, _ = graph
    bad = []
    for module, targets in sorted(internal.items()):
        stage = stage_of(module)
        if stage is None:
            continue
        for target in sorted(targets):
            if target.removeprefix(ROOT + ".") in ROOT_NAMES:
                continue
            if target in EXTRA_ALLOWED.get(stage, ()):
                continue
            if target == ROOT or stage_of(target) not in ALLOWED[stage]:
                bad.append(f"{module} ({stage}) imports {target} ({stage_of(target)})")
    assert not bad, "imports against the flow of the stages:\n  " + "\n  ".join(bad)


def test_inference_reaches_no_training_module_and_no_optax(graph):
    internal, external = graph
    bad = []
    for module in sorted(m for m in internal if stage_of(m) == "inference"):
        below = reachable(internal, module) | {module}
        training = sorted(m for m in below if stage_of(m) == "training")
        optax = sorted(m for m in below if "optax" in external.get(m, ()))
        if training or optax:
            bad.append(f"{module} reaches training {training}, optax through {optax}")
    assert not bad, "\n".join(bad)


def test_the_tensor_toolkit_needs_no_jax(graph):
    internal, external = graph
    for module in sorted(m for m in internal if stage_of(m) == "toolkit"):
        below = reachable(internal, module) | {module}
        jax_users = sorted(m for m in below if external.get(m, set()) & JAX_FAMILY)
        assert not jax_users, f"{module} reaches JAX through {jax_users}"


def test_the_stages_show_in_the_folders():
    """At most 12 modules at the top of the package (``__init__`` included); the rest live in
    the stage packages."""
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 12, f"{len(top)} top-level modules: {top}"


def test_no_library_module_over_500_lines():
    long = {m: n for m, p in module_files().items() if (n := len(p.read_text().splitlines())) > 500}
    assert not long, f"split these by idea: {long}"
