"""The layer order in CONTRIBUTING.md holds: a lower layer never imports a higher one."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "tunelab"

# higher number = higher layer; a module may import only its own layer or lower ones
LAYERS = {
    "utils": 0, "config": 1, "tracking": 1,
    "models": 2, "data": 2, "methods": 2, "kernels": 2, "engine": 3,
    "stages": 4, "eval": 4, "infer": 4, "export": 4, "run": 4, "bench": 4,
    "api": 5, "estimate": 5, "demo": 6, "cli": 7, "studio": 7,
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
