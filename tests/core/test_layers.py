"""The layer order in CONTRIBUTING.md holds: a lower layer never imports a higher one."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "tunelab"

# higher number = higher layer; a module may import only its own layer or lower ones
LAYERS = {
    "utils": 0, "config": 1, "tracking": 1, "runfolder": 2,
    "models": 3, "data": 3, "methods": 3, "kernels": 3, "engine": 4,
    "training": 5, "eval": 5, "infer": 5, "export": 5, "run": 5, "bench": 5,
    "stages": 6,  # recipes: only api (by name) and the CLI start one; nothing below imports a recipe
    "api": 7, "estimate": 7, "sweep": 7, "demo": 8, "cli": 9, "studio": 9,
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
