"""The package's layers, read from its own source with ``ast``: no import cycle, no import upward.

Every ``import`` and ``from ... import`` counts, also those inside functions (a lazy import is
still a dependency).  Each top-level module or subpackage of ``bitnet_edu`` is a *unit* with a
layer number; a unit may import only units of a lower layer (and itself).  A new unit must be
given a layer here, so the picture stays deliberate.  ``python -m pytest tests/test_architecture.py``
prints the offending import with its file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "bitnet_edu"

# lower number = lower layer.  Half steps sit beside a layer: they may use it, it never uses them.
LAYERS = {
    "__init__": -1,       # __version__, DEFAULT_MODEL; its other names load lazily (importlib)
    "config": 0,          # BitNetConfig + PRESETS: the one model-shape type
    "norm": 0,            # the one NumPy RMSNorm
    "tokenizer": 0,
    "numba_cache": 0,     # where compiled kernels are cached (keyed on their sources)
    "cpu_threads": 0,     # how many threads, and how they wait (measured policy)
    "quant": 1,
    "memory": 1.5, "energy": 1.5,    # arithmetic on a config
    "packing": 2,
    "kernels": 3,
    "bitlinear": 3,       # torch BitLinear (training, lessons)
    "formats": 4,         # tensor schema, safetensors, HF directories, GGUF, to_gguf
    "gguf": 4.5, "export": 4.5,      # old import paths of formats
    "model": 5,           # the engine and its generation loop
    "train": 5.5,         # torch training beside the engine
    "generate": 6,        # old import path of model.generation
    "deploy": 7, "plots": 7, "evaluate": 7,
    "serve": 7.5,         # the HTTP server: the batch scheduler behind deploy's response cache
    "widgets": 8, "bench": 8, "fuzz": 8,
    "cli": 9, "demo": 9, "checks": 9, "make_exercises": 9, "nbval_plugin": 9,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, module: str):
    """(target module, line) for every import of a ``bitnet_edu`` module in ``path``."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from . import kernels` names a submodule: count each imported name that is one
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield (sub if _exists(sub) else target), node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno


def _exists(module: str) -> bool:
    p = PACKAGE.parent.joinpath(*module.split("."))
    return p.with_suffix(".py").exists() or (p / "__init__.py").exists()


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _graph():
    graph: dict[str, set] = {}
    where: dict[tuple, str] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        graph.setdefault(module, set())
        for target, line in _imports(path, module):
            if target == "bitnet_edu" or target.startswith("bitnet_edu."):
                while not _exists(target):  # `from x.y import name`: the module is x.y
                    target = target.rsplit(".", 1)[0]
                if target != module:
                    graph[module].add(target)
                    where.setdefault((module, target), f"{path.relative_to(PACKAGE.parent)}:{line}")
    return graph, where


def _cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_unit_has_a_layer():
    units = {_unit(m) for m in _graph()[0]}
    missing = sorted(units - set(LAYERS))
    assert not missing, f"give these units a layer in tests/test_architecture.py: {missing}"


def test_no_import_cycles():
    graph, where = _graph()
    cycles = _cycles(graph)
    detail = [" ; ".join(f"{a} -> {b} ({where[(a, b)]})" for a in c for b in graph[a] if b in c)
              for c in cycles]
    assert not cycles, "import cycles:\n" + "\n".join(detail)


def test_no_import_runs_up_the_layers():
    graph, where = _graph()
    bad = []
    for a, targets in graph.items():
        for b in targets:
            ua, ub = _unit(a), _unit(b)
            if ua != ub and LAYERS.get(ub, 99) >= LAYERS.get(ua, -1):
                bad.append(f"{where[(a, b)]}: {a} (layer {LAYERS.get(ua)}) imports {b} "
                           f"(layer {LAYERS.get(ub)})")
    assert not bad, "imports that run up (or across) the layers:\n" + "\n".join(sorted(bad))


def test_no_private_kernel_names_outside_kernels():
    """The model uses the kernel objects' public methods only (what lesson 03 teaches)."""
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        if _unit(module) == "kernels":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and "kernels" in node.module:
                bad += [f"{path.name}:{node.lineno} imports {a.name}" for a in node.names
                        if a.name.startswith("_")]
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith("__") and isinstance(node.value, ast.Name)
                    and node.value.id in {"vnni", "mad", "naive", "tl1", "tl2", "tmac", "head",
                                          "head_kernel", "kernels"}):
                bad.append(f"{path.name}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert not bad, "private kernel names used outside kernels/:\n" + "\n".join(bad)


def test_the_checker_sees_a_cycle_and_an_upward_import():
    """The test's own machinery on a made-up graph (so a green run means something)."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _unit("bitnet_edu.model.transformer") == "model"
    assert LAYERS["model"] > LAYERS["kernels"] > LAYERS["packing"] > LAYERS["quant"]
