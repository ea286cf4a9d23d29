"""The daemon's import graph, counting imports inside functions too (AST, no import): no cycle,
and no lower floor imports a higher one.

The floors of daemon/tunerd, from the bottom; a module may import its own floor and the floors
below it, never one above (packages on one floor may import each other; the cycle test keeps that
acyclic):

  0 foundation   tunerd (__version__), paths, files, disk, integrity, model_config, quantization,
                 gguf_file (what a .gguf / ollama: name points at), plot (SVG plots), hub (the one
                 offline rule): plain helpers
  1 config       the schema, the loader and its validator, debug mode
  2 data         sources, formats, templates, masking, packing, batches
  3 backends     mlx/ and torch/ behind backends/base.py, the device peak cache; host (the machine)
  4 evaluation   loss, perplexity and generation metrics, evaluation plans; export (fuse, layouts);
                 tasks (sft, dpo, orpo: a task's batches, loss, metrics and eval, over the Backend)
  5 training     the loop, checkpoints, schedules, memory estimate; no network (the job runner
                 fetches the model before the loop runs); distributed (the loop as a process group
                 of ranks, started by the engine's launcher)
  6 models       the resident models (registry), the hub download, model checks
  7 jobs         the store, manager, runner and device worker; chat; serving (its batches); recommend
  8 core         `Core`, the one front door, and results (the dataclasses it returns)
  9 front        api/ (gRPC servicer, HTTP, interceptors), errors (exceptions -> gRPC/HTTP status),
                 trust (home, lock, token), server (lifecycle), __main__, demo (a program of its own)

A new top-level module or package must be given a floor here.
"""
from __future__ import annotations

import ast
from pathlib import Path

import tunerd


def _graph() -> dict:
    root = Path(tunerd.__file__).parent
    files = {".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in root.rglob("*.py") if "_pb2" not in p.name}
    graph = {}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
                deps.update(f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[mod] = {d for d in deps if d in files and d != mod}
    return graph


def test_no_import_cycles():
    graph, state, cycles = _graph(), {}, []

    def visit(mod, path):
        state[mod] = "open"
        for dep in sorted(graph[mod]):
            if state.get(dep) == "open":
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[mod] = "done"

    for mod in sorted(graph):
        if mod not in state:
            visit(mod, [mod])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


FLOORS = [   # (name, top-level modules and packages of tunerd), bottom first: the docstring's floors
    ("foundation", {"tunerd", "paths", "files", "disk", "integrity", "model_config", "quantization", "gguf_file",
                    "plot", "hub"}),
    ("config", {"config"}),
    ("data", {"data"}),
    ("backends", {"backends", "host"}),
    ("evaluation", {"evaluation", "export", "tasks"}),
    ("training", {"training", "distributed"}),
    ("models", {"models"}),
    ("jobs", {"jobs", "chat", "serving", "recommend"}),
    ("core", {"core", "results"}),
    ("front", {"api", "errors", "server", "trust", "__main__", "demo"}),
]


def _top(mod: str) -> str:
    """tunerd.jobs.store -> jobs; tunerd.core -> core; tunerd -> tunerd."""
    return mod.split(".")[1] if "." in mod else mod


def _floor(mod: str) -> int:
    return next((i for i, (_, names) in enumerate(FLOORS) if _top(mod) in names), -1)


def test_every_package_has_a_floor():
    unplaced = sorted({_top(m) for m in _graph() if _floor(m) < 0})
    assert not unplaced, f"give these a floor in FLOORS (see the docstring): {', '.join(unplaced)}"


def test_no_lower_floor_imports_a_higher_one():
    graph = _graph()
    offenders = [f"{mod} (floor {_floor(mod)}, {FLOORS[_floor(mod)][0]}) imports {dep} "
                 f"(floor {_floor(dep)}, {FLOORS[_floor(dep)][0]})"
                 for mod in sorted(graph) for dep in sorted(graph[mod]) if _floor(dep) > _floor(mod) >= 0]
    assert not offenders, "a lower floor imports a higher one (see the floors in this file's docstring):\n" \
        + "\n".join(offenders)
