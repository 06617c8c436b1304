"""The house rule of DESIGN.md, checked: imports run one way, down the pipeline, and no two files
of ``aigc_ray/`` import each other in a circle. Every import counts, including those inside
functions (they run too, just later)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "aigc_ray"

# What each top-level part of aigc_ray may import besides itself (and the package's own
# __init__, which only holds the version). The top (pipeline, report, lineage, cli, jobs, infra)
# may import anything.
BASE = {"spec", "storage", "manifest", "layout", "runtime", "tracking", "progress"}
ALLOWED = {
    "spec": set(),
    "reaper": set(),  # run as its own process beside an embedded cluster: nothing of ours
    "storage": {"spec", "manifest", "layout", "runtime"},
    "manifest": {"spec", "storage", "layout", "runtime"},
    "layout": {"spec", "storage", "manifest", "runtime"},
    "runtime": {"spec", "storage", "manifest", "layout"},
    "tracking": {"spec", "storage", "manifest", "layout", "runtime"},  # MLflow: every stage logs
    "progress": set(),  # the live line: every stage reports to it
    "data": BASE,
    "models": BASE | {"data"},
    "train": BASE | {"data", "models"},
    "tune": BASE | {"data", "models"},
    "ensemble": BASE | {"data", "models"},
    "safety": BASE,  # the moderation step: serving applies it
    "serve": BASE | {"data", "models", "ensemble", "safety"},
}
TOP = {"pipeline", "report", "lineage", "cli", "jobs", "infra", "console"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The aigc_ray modules ``name`` imports anywhere in its file, resolved to files."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from pkg import module` imports the module; `from module import name` the module
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names]
        else:
            continue
        for target in targets:
            while target not in known and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in known and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def part(module: str) -> str:
    """The top-level part of aigc_ray a module belongs to ('' for the package's __init__)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one file (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g.get(v, ())):
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
                out.append(sorted(component))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def upward_imports(g: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in sorted(g.items()):
        mine = part(module)
        if mine in TOP or mine == "":
            continue
        for target in sorted(targets):
            theirs = part(target)
            if theirs not in (mine, "") and theirs not in ALLOWED[mine]:
                bad.append(f"{module} imports {target} ({mine} may import only {sorted(ALLOWED[mine]) or 'nothing'})")
    return bad


def test_every_part_of_the_package_is_placed_in_the_layers():
    parts = {part(m) for m in modules()} - {""}
    assert parts <= set(ALLOWED) | TOP, f"not in DESIGN.md's layers: {sorted(parts - set(ALLOWED) - TOP)}"


def test_no_two_files_import_each_other_in_a_circle():
    assert cycles(graph()) == []


def test_imports_run_down_the_pipeline():
    assert upward_imports(graph()) == []


def test_the_checks_see_a_circle_and_an_upward_import():
    # The checker itself: a made-up graph with both faults is caught.
    g = {"aigc_ray.data.a": {"aigc_ray.train.b"}, "aigc_ray.train.b": {"aigc_ray.data.a"}}
    assert cycles(g) == [["aigc_ray.data.a", "aigc_ray.train.b"]]
    assert upward_imports(g) == [
        f"aigc_ray.data.a imports aigc_ray.train.b (data may import only {sorted(ALLOWED['data'])})"
    ]


def test_imports_inside_functions_count(tmp_path):
    source = tmp_path / "x.py"
    source.write_text("def f():\n    from ..serve.app import build_app\n")
    known = {"aigc_ray.data.x", "aigc_ray.serve.app", "aigc_ray.serve"}
    assert imports_of("aigc_ray.data.x", source, known) == {"aigc_ray.serve.app"}
