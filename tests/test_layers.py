"""The layer order in CONTRIBUTING.md holds: a lower layer never imports a higher one, modules of one layer import
each other without cycles, and no recipe (stages/*) imports another."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "tunelab"

# higher number = higher layer; a module may import only its own layer or lower ones
LAYERS = {
    "utils": 0, "config": 1, "tracking": 1, "runfolder": 2,
    "models": 3, "data": 3, "methods": 3, "kernels": 3, "engine": 4,
    "bases": 4,  # any model name, a run folder included: needs models and methods, so above both
    "training": 5, "eval": 5, "infer": 5, "export": 5, "run": 5, "bench": 5,
    "stages": 6,  # recipes: only api (by name) and the CLI start one; nothing below imports a recipe
    "api": 7, "estimate": 7, "retrain": 7, "sweep": 7, "demo": 8, "cli": 9, "studio": 9,
}


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "tunelab" and parts[1] in LAYERS else None


def test_no_upward_imports():
    bad = []
    for f in SRC.rglob("*.py"):
        rel = f.relative_to(SRC.parent).with_suffix("")
        own = layer_of(".".join(rel.parts))
        if own is None:
            continue
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                other = layer_of(name)
                if other and LAYERS[other] > LAYERS[own]:
                    bad.append(f"{rel}: imports {name} ({other} is above {own})")
    assert not bad, "\n".join(bad)


def test_no_recipe_imports_another():
    """stages/ holds recipes only: each imports what recipes share from tunelab.training, never another stage.

    A recipe is a module stages/<name>.py or a package stages/<name>/ whose modules may import each other.
    """
    stages = SRC / "stages"
    bad = []
    for f in stages.rglob("*.py"):
        rel = f.relative_to(stages)
        if rel == Path("__init__.py"):
            continue
        own = rel.parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [f"{node.module}.{a.name}" for a in node.names] if node.module == "tunelab.stages" \
                    else [node.module]
            elif isinstance(node, ast.ImportFrom):  # relative: only inside a recipe package
                if node.level > (len(rel.parts) - 1):
                    bad.append(f"stages/{rel}: relative import leaves its recipe")
            for name in names:
                parts = name.split(".")
                if parts[:2] == ["tunelab", "stages"] and len(parts) > 2 and parts[2] != own:
                    bad.append(f"stages/{rel}: imports {name} (another recipe; "
                               "move what both need to a module of tunelab.training)")
    assert not bad, "\n".join(bad)


def _module_graph() -> dict[str, set[str]]:
    """{module: tunelab modules it imports} over src/, counting imports inside functions too (as above).

    `from a.b import c` counts as importing a.b.c when that is a module; relative imports are resolved.
    """
    modules: dict[str, tuple[Path, bool]] = {}
    for f in SRC.rglob("*.py"):
        parts = list(f.relative_to(SRC.parent).with_suffix("").parts)
        package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if package else parts)] = (f, package)

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, (f, package) in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = mod.split(".") if package else mod.split(".")[:-1]
                    here = here[:len(here) - (node.level - 1)]
                    base = ".".join(here + ([node.module] if node.module else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            for name in names:
                if name.startswith("tunelab") and (target := known(name)) and target != mod:
                    targets.add(target)
        graph[mod] = targets
    return graph


def test_no_import_cycles_within_a_layer():
    """Modules of one layer import each other in one direction only (no a -> b -> ... -> a), so each can be read,
    tested and moved on its own; a cycle names the piece that belongs in a module below both."""
    graph = _module_graph()
    level = {m: LAYERS[layer] for m in graph if (layer := layer_of(m))}
    cycles, done = [], set()

    def visit(mod: str, path: list[str]) -> None:
        if mod in path:
            cycles.append(" -> ".join(path[path.index(mod):] + [mod]))
            return
        if mod in done:
            return
        for other in sorted(graph[mod]):
            if level.get(other) == level[mod]:
                visit(other, path + [mod])
        done.add(mod)

    for mod in sorted(level):
        visit(mod, [])
    assert not cycles, "import cycles within a layer:\n" + "\n".join(cycles)


def test_no_package_cycles_within_a_layer():
    """Packages of one layer (models, data, methods, kernels...) depend on each other in one direction only, even
    when no single module closes the loop (models.loader -> methods and methods.prompt -> models is such a cycle):
    otherwise neither package can be understood, tested or replaced without the other. The message names the module
    imports behind each step, so the piece to move (to a module above both, or below both) is plain to see."""
    graph = _module_graph()
    edges: dict[str, dict[str, list[str]]] = {}  # package -> same-layer package -> "module -> module" imports
    for mod, targets in graph.items():
        own = layer_of(mod)
        for other in targets:
            them = layer_of(other)
            if own and them and own != them and LAYERS[own] == LAYERS[them]:
                edges.setdefault(own, {}).setdefault(them, []).append(f"{mod} -> {other}")
    cycles, done = [], set()

    def visit(pkg: str, path: list[str]) -> None:
        if pkg in path:
            loop = path[path.index(pkg):] + [pkg]
            cycles.append(" -> ".join(loop) + "\n    " + "\n    ".join(
                f"{a} -> {b}: {', '.join(sorted(edges[a][b]))}" for a, b in zip(loop, loop[1:])))
            return
        if pkg in done:
            return
        for other in sorted(edges.get(pkg, {})):
            visit(other, path + [pkg])
        done.add(pkg)

    for pkg in sorted(edges):
        visit(pkg, [])
    assert not cycles, "import cycles between packages of one layer:\n" + "\n".join(cycles)
