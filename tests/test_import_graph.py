"""rewardkit's import graph, read from the source (AST), has no cycle.

Every ``import``/``from ... import`` of a rewardkit module counts, wherever it is written (module level or
inside a function), and so do ``importlib.import_module("rewardkit....")`` calls and module-level lazy-import
tables (``{"name": "rewardkit.module[:attr]"}``, e.g. ``rewardkit.rl._EXPORTS``, the CLI's ``COMMANDS``).
Importing ``a.b.c`` also runs the ``__init__`` of ``a.b`` (and ``a``), so a package's re-exports count: an
edge goes to each package on the way that is not one of the importing module's own packages.

Run it as a script (``python tests/test_import_graph.py``) to print the graph's cycles.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_table(package_dir: Path) -> dict[str, tuple[Path, bool]]:
    """dotted module name -> (file, whether it is a package ``__init__``), for every .py under ``package_dir``."""
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def _absolute(module: str, is_pkg: bool, level: int, name: str | None) -> str:
    if level == 0:
        return name or ""
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def import_edges(module: str, modules: dict[str, tuple[Path, bool]]) -> dict[str, int]:
    """The rewardkit modules ``module`` imports -> the line of the (first) import."""
    path, is_pkg = modules[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    root = module.split(".")[0]
    own = {module.rsplit(".", i)[0] for i in range(module.count(".") + 1)}
    out: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        while target and target not in modules:  # `import a.b.name` where name is an attribute
            target = target.rpartition(".")[0]
        if not target:
            return
        if target != module:
            out.setdefault(target, line)
        while "." in target:  # the packages on the way run first (their re-exports with them)
            target = target.rpartition(".")[0]
            if target not in own:
                out.setdefault(target, line)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == root:
                    add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, is_pkg, node.level, node.module)
            if base.split(".")[0] != root:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(sub if sub in modules else base, node.lineno)
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and isinstance(node.args[0].value, str)):
            add(node.args[0].value, node.lineno)
    for node in tree.body:  # lazy-import tables at module level
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Dict):
            for value in node.value.values:
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    name = value.value.split(":")[0]
                    if name in modules:
                        add(name, value.lineno)
    return out


def import_graph(package_dir: Path) -> dict[str, dict[str, int]]:
    modules = module_table(package_dir)
    return {m: import_edges(m, modules) for m in modules}


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(graph[w])))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def describe(graph: dict[str, dict[str, int]], comps: list[list[str]]) -> str:
    lines = []
    for comp in comps:
        lines.append("cycle: " + ", ".join(comp))
        for a in comp:
            lines += [f"    {a} -> {b}  (line {line})" for b, line in sorted(graph[a].items()) if b in comp]
    return "\n".join(lines)


def test_rewardkit_has_no_import_cycle():
    graph = import_graph(ROOT / "rewardkit")
    assert len(graph) > 100 and sum(map(len, graph.values())) > 200  # the whole package was read
    comps = cycles(graph)
    assert not comps, "import cycles in rewardkit:\n" + describe(graph, comps)


def test_the_check_finds_cycles_through_functions_reexports_and_lazy_tables(tmp_path):
    """Each kind of edge the check claims to follow closes a cycle in a small package."""

    def write(rel: str, text: str) -> None:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    write("rewardkit/__init__.py", "")
    write("rewardkit/a.py", "def f():\n    from rewardkit import b\n")  # inside a function
    write("rewardkit/b.py", "from .a import f\n")  # relative
    write("rewardkit/pkg/__init__.py", "from rewardkit.pkg.inner import thing\n")  # a re-export
    write("rewardkit/pkg/inner.py", "thing = 1\n")
    write("rewardkit/c.py", "import rewardkit.pkg.inner\n")  # runs pkg/__init__ first
    write("rewardkit/pkg/other.py", "import importlib\nm = importlib.import_module('rewardkit.c')\n")
    write("rewardkit/lazy/__init__.py", "_EXPORTS = {'X': 'rewardkit.lazy.x:X'}\n")
    write("rewardkit/lazy/x.py", "from rewardkit.lazy import X\n")
    write("rewardkit/ok.py", "import rewardkit.a\nimport os\n")
    graph = import_graph(tmp_path / "rewardkit")
    assert sorted(cycles(graph)) == [["rewardkit.a", "rewardkit.b"], ["rewardkit.lazy", "rewardkit.lazy.x"]]
    # no cycle through pkg: c -> pkg (its __init__) -> pkg.inner; pkg.other -> c is one way
    write("rewardkit/pkg/inner.py", "import rewardkit.pkg.other\nthing = 1\n")
    assert ["rewardkit.c", "rewardkit.pkg", "rewardkit.pkg.inner", "rewardkit.pkg.other"] in cycles(
        import_graph(tmp_path / "rewardkit"))


def _fenced(doc: str, tag: str) -> list[str]:
    """The lines of the ```tag fenced block of docs/architecture.md."""
    block = re.search(rf"^```{tag}\n(.*?)^```", doc, re.M | re.S)
    assert block, f"docs/architecture.md has no ```{tag} block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def _documented_layers() -> dict[str, int]:
    layers = {}
    for line in _fenced((ROOT / "docs" / "architecture.md").read_text(encoding="utf-8"), "layers"):
        m = re.fullmatch(r"layer (\d+): (.+)", line)
        assert m, f"docs/architecture.md: bad layer line {line!r}"
        for name in m.group(2).split(","):
            layers[name.strip()] = int(m.group(1))
    return layers


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_packages_import_only_lower_layers_as_docs_architecture_says():
    layers = _documented_layers()
    graph = import_graph(ROOT / "rewardkit")
    packages = {_package(m) for m in graph}
    assert packages == set(layers), (f"docs/architecture.md's layers do not list the packages: missing "
                                     f"{sorted(packages - set(layers))}, not in rewardkit {sorted(set(layers) - packages)}")
    wrong = sorted(f"{a} -> {b} (line {line}): layer {layers[_package(a)]} imports layer {layers[_package(b)]}"
                   for a, edges in graph.items() for b, line in edges.items()
                   if _package(a) != _package(b) and layers[_package(b)] >= layers[_package(a)])
    assert not wrong, "imports against the layer order of docs/architecture.md:\n" + "\n".join(wrong)


def test_scoring_modules_import_only_those_above_them_as_docs_architecture_says():
    order: dict[str, int] = {}
    for rank, line in enumerate(_fenced((ROOT / "docs" / "architecture.md").read_text(encoding="utf-8"),
                                        "scoring-modules")):
        for name in line.split(","):
            order[f"rewardkit.scoring.{name.strip()}"] = rank
    graph = import_graph(ROOT / "rewardkit")
    modules = {m for m in graph if m.startswith("rewardkit.scoring.")}
    assert modules == set(order), f"docs/architecture.md's scoring modules: {sorted(modules ^ set(order))}"
    wrong = sorted(f"{a} -> {b} (line {line})" for a in modules for b, line in graph[a].items()
                   if b in modules and order[b] >= order[a])
    assert not wrong, "scoring imports against the order of docs/architecture.md:\n" + "\n".join(wrong)


# ------------------------------------------------------------------------------------------------- #
# pipelines/ and benchmarks/ use rewardkit's public names only
#
# A name is public when a module or package on its dotted path lists it in ``__all__`` (a package's
# ``__init__`` documents what it exports: ``from rewardkit.data.tables import read_items`` is public because
# ``rewardkit.data`` exports ``read_items``), or when it is a submodule whose name does not start with "_".
# ``__all__`` may be a literal list or ``sorted(<module-level dict>)`` (a lazy-import table: its keys).
# Known uses of private names, each with the work that removes it; an entry that is no longer needed fails.
PRIVATE_USES_PENDING: dict[tuple[str, str, str], str] = {}


def exported_names(module: str) -> set[str] | None:
    """``module``'s ``__all__`` (None: no such rewardkit module; empty: no ``__all__``)."""
    path = ROOT / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = ROOT / module.replace(".", "/") / "__init__.py"
    if not path.exists():
        return None
    tree = ast.parse(path.read_text(encoding="utf-8"))
    dicts = {}
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if not isinstance(target, ast.Name) or getattr(node, "value", None) is None:
            continue
        if isinstance(node.value, ast.Dict):
            dicts[target.id] = {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
        if target.id == "__all__":
            if isinstance(node.value, ast.Call) and node.value.args and isinstance(node.value.args[0], ast.Name):
                return set(dicts[node.value.args[0].id])
            return set(ast.literal_eval(node.value))
    return set()


def is_public(module: str, name: str) -> bool:
    if name.startswith("_"):
        return False
    parts = module.split(".")
    if exported_names(f"{module}.{name}") is not None:  # a submodule
        return all(not p.startswith("_") for p in parts[1:])
    return any(name in (exported_names(".".join(parts[:i])) or ()) for i in range(len(parts), 1, -1))


def private_uses(folder: Path) -> dict[tuple[str, str, str], int]:
    """(file, module, name) -> line, for every import of a rewardkit name that is not public."""
    out = {}
    for path in sorted(folder.glob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "rewardkit":
                for alias in node.names:
                    if not is_public(node.module, alias.name):
                        out.setdefault((rel, node.module, alias.name), node.lineno)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    if parts[0] == "rewardkit" and len(parts) > 1 and not is_public(".".join(parts[:-1]), parts[-1]):
                        out.setdefault((rel, ".".join(parts[:-1]), parts[-1]), node.lineno)
    return out


def test_pipelines_and_benchmarks_use_only_public_names():
    found = {**private_uses(ROOT / "pipelines"), **private_uses(ROOT / "benchmarks")}
    new = sorted(f"{f}:{line}: {m}.{n}" for (f, m, n), line in found.items() if (f, m, n) not in PRIVATE_USES_PENDING)
    assert not new, ("pipelines/ and benchmarks/ import names that no rewardkit __all__ exports (export them from "
                     "the package or use the public name):\n" + "\n".join(new))
    stale = sorted(k for k in PRIVATE_USES_PENDING if k not in found)
    assert not stale, f"PRIVATE_USES_PENDING entries no longer needed (remove them): {stale}"


def test_the_public_name_check_tells_public_from_private():
    assert is_public("rewardkit.data.tables", "read_items")  # re-exported by rewardkit.data
    assert is_public("rewardkit.rl", "HiGRPOTrainer")  # the lazy table's names
    assert is_public("rewardkit.eval.generation", "metrics")  # a submodule
    assert is_public("rewardkit.rl", "GroupRollout")  # the Hi-GRPO step record
    assert not is_public("rewardkit.rl.rollout", "_decode")
    assert not is_public("rewardkit.scoring.core", "no_such_name")


if __name__ == "__main__":
    g = import_graph(ROOT / "rewardkit")
    found = cycles(g)
    print(describe(g, found) if found else f"no import cycle among {len(g)} modules")
    sys.exit(1 if found else 0)
