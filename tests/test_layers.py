"""The module map of docs/architecture.md, held: every import inside regionvlm/ (module level and inside
functions, read with ``ast``) goes down the layers, none forms a cycle, and the inference path imports no
training code (checked statically and, in a subprocess, through ``sys.modules`` after a real question)."""

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: the layers of docs/architecture.md ("Module map"), lowest first: a module may import its own layer's
#: foundation (layer 0) freely, its own group, and any group of a lower layer — never a higher one, and never
#: another group of its own layer above the foundation
LAYERS = [
    {"errors", "io", "guards", "tokens", "contracts", "image_stats", "registry", "config", "convert"},
    {"text", "batch", "fusion"},
    {"plugins", "model", "data"},
    {"processor", "viz", "llm_folder", "vllm_supervisor"},
    {"card"},
    {"vllm_engine"},
    {"inference"},
    {"evaluation", "serve"},
    {"benchmarks"},
    {"engine"},
    {"datagen"},
    {"ablation", "commands", "cli", "__main__", "regionvlm"},
]
RANK = {group: rank for rank, groups in enumerate(LAYERS) for group in groups}
#: what serving and inference must never load: the training engine (Lightning, optimisers, checkpoints)
LEAN = ("regionvlm.inference", "regionvlm.serve.app", "regionvlm.commands.predict", "regionvlm.commands.serve")
TRAINING = ("regionvlm.engine", "regionvlm.data.datamodule")


def package_modules() -> dict[str, Path]:
    """Module name → file, for the package and the benchmarks installed as regionvlm.benchmarks (the
    benchmarks/perf scripts are not part of it)."""
    out = {}
    for base, pkg in ((ROOT / "regionvlm", "regionvlm"), (ROOT / "benchmarks", "regionvlm.benchmarks")):
        for path in base.rglob("*.py"):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[0] == "perf":
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([pkg, *parts])] = path
    return out


MODULES = package_modules()


def owner(name: str) -> str | None:
    """The module an imported name lives in (``regionvlm.data.structures.Regions`` → regionvlm.data.structures)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(name: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {owner(a.name) for a in node.names if a.name.startswith("regionvlm")}
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([module] if module else []))
            if module.startswith("regionvlm"):
                found |= {f"{module}.{a.name}" if f"{module}.{a.name}" in MODULES else owner(module)
                          for a in node.names}
    return found - {name, None}


GRAPH = {name: imports_of(name, path) for name, path in MODULES.items()}


def group(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "regionvlm"


def test_every_module_is_in_a_layer():
    assert {group(m) for m in MODULES} - set(RANK) == set(), "add the new module to LAYERS and docs/architecture.md"


def test_no_import_cycle():
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
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
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in GRAPH:
        if v not in index:
            visit(v)
    assert cycles == []


def test_imports_go_down_the_layers():
    wrong = []
    for a, targets in GRAPH.items():
        for b in targets:
            ga, gb = group(a), group(b)
            if ga == gb or RANK[gb] == 0 or (RANK[ga] == RANK[gb] == len(LAYERS) - 1):
                continue
            if RANK[gb] >= RANK[ga]:
                wrong.append(f"{a} imports {b} ({ga}: layer {RANK[ga]}, {gb}: layer {RANK[gb]})")
    assert wrong == []


@pytest.mark.parametrize("module, forbidden", [
    ("regionvlm.model", ("regionvlm.data", "regionvlm.engine", "regionvlm.card", "regionvlm.processor")),
    ("regionvlm.plugins", ("regionvlm.engine", "regionvlm.data", "regionvlm.card")),
])
def test_the_model_and_plugins_import_no_data_engine_or_card_code(module, forbidden):
    """The issue's own wording of the rules, independent of the table above."""
    for name, targets in GRAPH.items():
        if name == module or name.startswith(module + "."):
            assert not [t for t in targets if t.startswith(forbidden)], name


def closure(name: str) -> set[str]:
    seen, todo = set(), [name]
    while todo:
        for t in GRAPH[todo.pop()]:
            if t not in seen:
                seen.add(t)
                todo.append(t)
    return seen


@pytest.mark.parametrize("module", LEAN)
def test_inference_and_serving_reach_no_training_code(module):
    assert sorted(m for m in closure(module) if m.startswith(TRAINING)) == []


def test_asking_a_question_loads_no_lightning(tiny_export, tmp_path):
    """From a fresh interpreter: load an export, ask, start the server's request parser and the predict command;
    Lightning (and the engine) must not be in ``sys.modules``."""
    export = tiny_export[3]
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        from regionvlm import RegionChat
        import regionvlm.serve.app, regionvlm.commands.predict
        chat = RegionChat.from_pretrained({str(export)!r}, device="cpu")
        image = np.zeros((40, 50, 3), dtype=np.uint8)
        chat.ask(image, [[5, 5, 30, 30]], "What is <region1>?", max_new_tokens=2)
        chat.classify(image, ["box:5,5,30,30"], max_new_tokens=2)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning")
                       or m.startswith(("regionvlm.engine", "regionvlm.data.datamodule")))
        print("HEAVY", heavy)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "HEAVY []" in out.stdout, out.stdout
