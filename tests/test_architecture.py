"""Imports run one way (docs/architecture.md): a module imports its own layer or the ones
below it, never one above — e.g. evaluation never imports training."""

from __future__ import annotations

import ast
from pathlib import Path

import msctr

# top to bottom; a package prefix names every module under it
LAYERS = [
    ["msctr.cli", "msctr.__main__"],
    [
        "msctr.ablate",
        "msctr.sweep",
        "msctr.tune",
        "msctr.bench",
        "msctr.predict",
        "msctr.export",
        "msctr.datasets",
    ],
    ["msctr.train"],
    ["msctr.evaluate", "msctr.tables"],
    ["msctr.recipe", "msctr.search", "msctr.flops", "msctr.track"],
    ["msctr.models"],
    ["msctr.testing"],
    ["msctr.data"],
    [
        "msctr.runs",
        "msctr.paths",
        "msctr.io",
        "msctr.config",
        "msctr.errors",
        "msctr.resources",
        "msctr.cores",
    ],
]


def layer_of(module: str) -> int:
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module} is in no layer of docs/architecture.md")


def imports() -> dict[str, set[str]]:
    root = Path(msctr.__file__).parent
    out = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        out[module] = {m for m in found if m.startswith("msctr.")}
    return out


def test_every_module_imports_only_its_layer_or_below():
    wrong = [
        f"{module} imports {target}"
        for module, targets in sorted(imports().items())
        if module != "msctr"
        for target in sorted(targets)
        if layer_of(target) < layer_of(module)
    ]
    assert not wrong, wrong
