"""The codebase's shape, checked: the layering of the package, no import cycles, one flags module, small files.

The imports are read from the source (every ``import`` statement, at module level or inside a function: a lazy
import is still a dependency), so this runs in a second and needs nothing installed.
"""

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = REPO / "ankh_jax"
MAX_LINES = 400
# The layers, lowest first: a module may import its own layer and the layers below, never above.
LAYERS = [
    {"ankh_jax.errors", "ankh_jax.parsing", "ankh_jax.startup", "ankh_jax.storage"},
    {"ankh_jax.model"},
    {"ankh_jax.data", "ankh_jax.io"},
    {"ankh_jax.training", "ankh_jax.inference", "ankh_jax.plots"},
    {"ankh_jax.downstream", "ankh_jax.testing"},
    {"ankh_jax.api"},
    {"ankh_jax.flags", "ankh_jax.train", "ankh_jax.finetune", "ankh_jax.embed", "ankh_jax.export_hf",
     "ankh_jax.generate", "ankh_jax.score", "ankh_jax.plot", "ankh_jax.plan_memory"},
]


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: pathlib.Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "ankh_jax" or name.startswith("ankh_jax.")}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports(path):
            while imported not in modules and "." in imported:  # "from pkg import name" names a symbol
                imported = imported.rsplit(".", 1)[0]
            if imported != name and imported in modules and imported != "ankh_jax":
                targets.add(imported)
        graph[name] = targets
    return graph


def _layer(module: str) -> int:
    best = None
    for index, layer in enumerate(LAYERS):
        for prefix in layer:
            matches = module == prefix or module.startswith(prefix + ".")
            if matches and (best is None or len(prefix) > len(best[1])):
                best = (index, prefix)
    assert best is not None, f"{module} is in no layer of tests/test_layout.py"
    return best[0]


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycle = stack[stack.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_modules_import_only_their_layer_and_below():
    wrong = [f"{source} imports {target}" for source, targets in _graph().items() for target in targets
             if _layer(target) > _layer(source)]
    assert not wrong, "\n".join(wrong)


def test_the_package_never_imports_the_task_registrations():
    """tasks/ (installed as ankh_jax.tasks) sits above the package: gin files import the task modules they use."""
    offenders = [name for name, path in _modules().items()
                 if any(t == "ankh_jax.tasks" or t.startswith("ankh_jax.tasks.") for t in _imports(path))]
    assert not offenders
    assert not (PACKAGE / "tasks").exists()  # the checkout keeps it at the top; pyproject maps it in


def test_one_flags_module():
    """Every gin-configured command parses its flags through ankh_jax.flags."""
    defining = [str(p.relative_to(REPO)) for p in [*PACKAGE.rglob("*.py"), *(REPO / "scripts").glob("*.py")]
                if '"--gin_file"' in p.read_text()]
    assert defining == ["ankh_jax/flags.py"]


def test_files_stay_small():
    big = [f"{p.relative_to(REPO)}: {n} lines"
           for folder in ("ankh_jax", "tasks", "scripts", "tests") for p in (REPO / folder).rglob("*.py")
           if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not big, big


def test_the_layout_check_sees_a_cycle_and_an_upward_import():
    """The checks above on a case with a known answer: a made-up graph with a cycle and an upward import."""
    assert _layer("ankh_jax.model.layers") < _layer("ankh_jax.training.loop") < _layer("ankh_jax.train")
    assert _layer("ankh_jax.storage.jsonl") < _layer("ankh_jax.model.config") < _layer("ankh_jax.io.checkpoints")
    source = "import ankh_jax.model.config\nfrom ankh_jax.io import hf\nfrom ankh_jax.data.fasta import read_fasta\n"
    path = REPO / "tests" / "_layout_probe.py"
    try:
        path.write_text(source)
        assert _imports(path) == {"ankh_jax.model.config", "ankh_jax.io", "ankh_jax.io.hf", "ankh_jax.data.fasta",
                                  "ankh_jax.data.fasta.read_fasta"}
    finally:
        path.unlink()
