"""The house rules, read from the source: imports run one way (probes, anatomy, metrics and the engine never
import the writers or the CLI; the anatomy knows no concrete model), no module imports another's
underscore names, no function is longer than 80 lines, and no probe function takes more than 8
parameters."""
from __future__ import annotations

import ast

from conftest import ROOT

PKG = ROOT / "resprobe"
LOW = ("probes", "anatomy", "metrics", "engine", "verdict", "study", "loading", "io", "models")
HIGH = ("report", "cli", "api")


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        yield path, rel.parts, ast.parse(path.read_text(), str(path))


def _imported(parts: tuple, node: ast.AST) -> list[tuple[str, list[str]]]:
    """(absolute module path inside resprobe, names) for each import of ``node``."""
    out = []
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = list(parts[:-1])[: len(parts) - node.level] if node.level > 1 else list(parts[:-1])
            mod = ".".join(base + ([node.module] if node.module else []))
        elif node.module and node.module.startswith("resprobe"):
            mod = node.module[len("resprobe."):] if node.module != "resprobe" else ""
        else:
            return out
        out.append((mod, [a.name for a in node.names]))
    elif isinstance(node, ast.Import):
        for a in node.names:
            if a.name.startswith("resprobe."):
                out.append((a.name[len("resprobe."):], []))
    return out


def test_imports_run_one_way():
    bad = []
    for path, parts, tree in _modules():
        top = parts[0]
        for node in ast.walk(tree):
            for mod, names in _imported(parts, node):
                target = mod.split(".")[0] if mod else (names[0] if names else "")
                if top in LOW and target in HIGH:
                    bad.append(f"{'/'.join(parts)} imports {mod or names}")
                if top == "anatomy" and target in ("models", "adapters"):
                    bad.append(f"{'/'.join(parts)} imports {mod}")
    assert not bad, bad


def test_no_module_imports_another_modules_underscore_names():
    bad = []
    for path, parts, tree in _modules():
        for node in ast.walk(tree):
            for mod, names in _imported(parts, node):
                bad += [f"{'/'.join(parts)}: {mod}.{n}" for n in names if n.startswith("_") and n != "__version__"]
    assert not bad, bad


def test_functions_are_short_and_probes_take_few_parameters():
    long_, wide = [], []
    for path, parts, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 80:
                    long_.append(f"{'/'.join(parts)}:{node.name} {n} lines")
                if parts[0] == "probes":
                    a = node.args
                    count = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs)
                    if count > 8:
                        wide.append(f"{'/'.join(parts)}:{node.name} {count} parameters")
    assert not long_, long_
    assert not wide, wide


def _floors() -> dict[str, int]:
    """The room → floor table of docs/architecture.md."""
    import re
    text = (ROOT / "docs" / "architecture.md").read_text()
    rows = re.findall(r"^\| `?([A-Za-z_]+)`? \| (\d+) \|", text, re.M)
    return {room: int(floor) for room, floor in rows}


def test_every_import_points_down_the_floors_of_docs_architecture():
    floors = _floors()
    rooms = {p.name if p.is_dir() else p.stem for p in PKG.iterdir()
             if (p.is_dir() and (p / "__init__.py").is_file()) or (p.suffix == ".py" and p.stem != "__init__")}
    assert rooms == set(floors), f"rooms missing from the table: {rooms - set(floors)}; gone: {set(floors) - rooms}"
    bad = []
    for path, parts, tree in _modules():
        src = parts[0]
        if src == "__init__":
            continue
        for node in ast.walk(tree):
            for mod, names in _imported(parts, node):
                target = mod.split(".")[0] if mod else (names[0] if names else "")
                if target in floors and target != src and floors[target] >= floors[src]:
                    bad.append(f"{'/'.join(parts)} (floor {floors[src]}) imports {target} (floor {floors[target]})")
    assert not bad, bad
