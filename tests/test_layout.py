"""The package's design, checked: stages import only downwards, no import circles
(function-level imports included), no private names across modules, and importing ferkit
changes nothing process-wide."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ferkit"

# Each part of the package and its layer: a module may import only from its own layer or
# lower ones. Foundations (0-1), then the pipeline's stages, then the command line.
LAYERS = {
    "ferkit": 0,
    "ferkit.extras": 0,
    "ferkit.classes": 0,
    "ferkit.images": 0,
    "ferkit.framing": 0,
    "ferkit.calibration": 0,
    "ferkit.metrics": 0,
    "ferkit.plots": 0,
    "ferkit.outputs": 0,
    "ferkit.settings": 0,
    "ferkit.faces": 1,
    "ferkit.geometry": 1,  # on the faces that ferkit.faces finds
    "ferkit.data": 2,
    "ferkit.models": 3,
    "ferkit.training": 4,
    "ferkit.inference": 4,
    "ferkit.release": 5,
    "ferkit.evaluation": 6,
    "ferkit.cli": 7,
    "ferkit.serve": 7,
    "ferkit.__main__": 8,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports_of(path: Path, modules: dict[str, Path]) -> list[tuple[str, list[str], int]]:
    """(imported ferkit module, names imported from it, line) for every import statement,
    at any depth (function-level imports included)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("ferkit")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ferkit"):
            names = [alias.name for alias in node.names]
            submodules = [f"{node.module}.{n}" for n in names if f"{node.module}.{n}" in modules]
            if submodules:  # from ferkit import plots: an import of ferkit.plots
                found += [(s, [], node.lineno) for s in submodules]
            else:
                found.append((node.module, names, node.lineno))
    return found


def graph() -> dict[str, set[str]]:
    modules = all_modules()
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for target, _, _ in imports_of(path, modules):
            if target != name and target in modules:
                edges[name].add(target)
    return edges


def layer(module: str) -> int:
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in LAYERS:
            return LAYERS[".".join(parts[:end])]
    raise AssertionError(f"{module}: not in LAYERS; give it a layer in tests/test_layout.py")


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    return found


def test_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_stages_import_only_downwards():
    upward = [
        f"{source} (layer {layer(source)}) imports {target} (layer {layer(target)})"
        for source, targets in graph().items()
        for target in targets
        if layer(target) > layer(source)
    ]
    assert upward == []


def test_no_private_names_across_modules():
    modules = all_modules()
    private = [
        f"{name}:{line} imports {', '.join(names)} from {target}"
        for name, path in modules.items()
        for target, names, line in imports_of(path, modules)
        if target != name and any(n.startswith("_") and not n.startswith("__") for n in names)
    ]
    assert private == []


def test_the_top_level_shows_the_stages():
    folders = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    stages = ["data", "evaluation", "inference", "models", "release", "training"]
    # the stages, and the two faces over them: the service and the command line
    assert folders == sorted([*stages, "serve", "cli"])
    assert len(list(PACKAGE.glob("*.py"))) <= 14  # foundations, __init__, __main__


#: Most lines in one module: past this, a module holds several jobs; split it by job.
MAX_MODULE_LINES = 1000


def test_no_module_holds_too_many_jobs():
    long = [
        f"{name}: {len(path.read_text().splitlines())} lines"
        for name, path in all_modules().items()
        if len(path.read_text().splitlines()) > MAX_MODULE_LINES
    ]
    assert long == []


def test_importing_every_module_changes_nothing_process_wide():
    """No matplotlib backend chosen, no PIL limit changed, no environment variable set,
    no warning filter or log handler installed, by importing any inference, data or
    evaluation module; the Keras and torch modules load their libraries only when used."""
    names = [n for n in all_modules() if not n.endswith("__main__")]  # those run the CLI
    script = f"""
import json, logging, os, sys, warnings
import PIL.Image, matplotlib
before = (dict(os.environ), PIL.Image.MAX_IMAGE_PIXELS, matplotlib.rcParams["backend"],
          list(warnings.filters), list(logging.getLogger().handlers), list(sys.meta_path))
import importlib
for name in {names!r}:
    importlib.import_module(name)
after = (dict(os.environ), PIL.Image.MAX_IMAGE_PIXELS, matplotlib.rcParams["backend"],
         list(warnings.filters), list(logging.getLogger().handlers), list(sys.meta_path))
changed = [label for label, a, b in zip(
    ["environment", "PIL pixel limit", "matplotlib backend", "warning filters",
     "log handlers", "import hooks"], before, after) if a != b]
print(json.dumps({{"changed": changed, "tensorflow": "tensorflow" in sys.modules,
                  "torch": "torch" in sys.modules}}))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"changed": [], "tensorflow": False, "torch": False}


@pytest.mark.parametrize("name", ["train", "all"])
def test_requirements_txt_is_the_core_install_plus_train(name):
    """requirements.txt (the seed's install path) lists exactly the core dependencies and
    the train extra of pyproject.toml."""
    import tomllib

    project = tomllib.loads((PACKAGE.parents[1] / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert "train" in extras["all"][0].split("[")[1].rstrip("]").split(",")

    def expanded(extra: str) -> list[str]:  # "ferkit[report]" stands for that extra's list
        found = []
        for requirement in extras[extra]:
            if requirement.startswith("ferkit["):
                for inner in requirement[7:].rstrip("]").split(","):
                    found += expanded(inner)
            else:
                found.append(requirement)
        return found

    wanted = {d.replace("'", '"') for d in project["dependencies"] + expanded("train")}
    lines = (PACKAGE.parents[1] / "requirements.txt").read_text().splitlines()
    listed = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    assert listed == wanted
