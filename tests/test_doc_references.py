"""The docs name only what exists: every file path, ``python -m`` command and ``ankh_jax.*`` module or name that
README, the docstrings and comments of the code, the gin files and the scripts mention must be in the checkout.

Read from the source text (nothing is imported), so a renamed module or a moved script fails here, not in a
user's terminal.
"""

import ast
import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parent.parent
# Installed names of the checkout's top-level folders (pyproject.toml's package-dir).
PACKAGE_DIRS = {"ankh_jax.tasks": REPO / "tasks", "ankh_jax.configs": REPO / "configs",
                "ankh_jax.sample_data": REPO / "data"}
FILE_PATTERN = re.compile(r"(?<![\w./<-])((?:ankh_jax|scripts|configs|tests|tasks|benchmarks|data|docs)"
                          r"/[\w./-]*\.(?:py|gin|json|md|fasta|csv|png))")
MODULE_PATTERN = re.compile(r"(?<![\w./-])(ankh_jax(?:\.\w+)+)")
COMMAND_PATTERN = re.compile(r"python -m ((?:ankh_jax)(?:\.\w+)+)")


def _documents() -> dict[str, str]:
    """Path -> the text whose references count: README, gin files, and the docstrings and comments of Python."""
    docs = {"README.md": (REPO / "README.md").read_text(), "tests/faults/README.md":
            (REPO / "tests" / "faults" / "README.md").read_text()}
    for path in (REPO / "configs").rglob("*.gin"):
        docs[str(path.relative_to(REPO))] = path.read_text()
    for folder in ("ankh_jax", "scripts", "tasks"):
        for path in (REPO / folder).rglob("*.py"):
            docs[str(path.relative_to(REPO))] = _prose(path.read_text())
    return docs


def _prose(source: str) -> str:
    """The docstrings and ``#`` comments of a Python file (string literals that are code are left out)."""
    parts = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                parts.append(doc)
    parts += [line.split("#", 1)[1] for line in source.splitlines() if "#" in line]
    return "\n".join(parts)


def _module_file(name: str) -> pathlib.Path | None:
    for prefix, folder in PACKAGE_DIRS.items():
        if name == prefix or name.startswith(prefix + "."):
            rest = name[len(prefix):].lstrip(".").split(".") if name != prefix else []
            base = folder.joinpath(*rest) if rest else folder
            break
    else:
        base = REPO.joinpath(*name.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file() or (base.is_dir() and name in PACKAGE_DIRS):
        return base / "__init__.py"
    return None


def _defines(path: pathlib.Path, name: str) -> bool:
    if not path.is_file():
        return False
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id in ("__all__", "_LAZY")
                                                for t in node.targets):
            try:
                exported = ast.literal_eval(node.value)
            except ValueError:
                exported = ()
            if name in exported:
                return True
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any(
                (alias.asname or alias.name.split(".")[0]) == name for alias in node.names):
            return True
    return False


def _placeholder(ref: str) -> bool:
    """``ankh_jax.X``, ``configs/downstream/TASK.gin``: a pattern for the reader to fill in, not a name."""
    return any(part.isupper() and len(part) > 0 for part in re.split(r"[./]", ref) if part not in ("README", "md"))


def _module_reference_exists(dotted: str) -> bool:
    """``ankh_jax.a.b`` is a module, or a name defined at the top of the longest module prefix."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module = _module_file(".".join(parts[:cut]))
        if module is not None:
            return cut == len(parts) or _defines(module, parts[cut])
    return False


def test_every_named_file_exists():
    missing = [f"{doc}: {ref}" for doc, text in _documents().items() for ref in FILE_PATTERN.findall(text)
               if not (REPO / ref).exists() and not ref.startswith("tests/_") and not _placeholder(ref)]
    assert not missing, "\n".join(sorted(set(missing)))


def test_every_named_module_and_command_exists():
    missing = []
    for doc, text in _documents().items():
        for ref in set(MODULE_PATTERN.findall(text)):
            ref = ref.rstrip(".")
            if not _placeholder(ref) and not _module_reference_exists(ref):
                missing.append(f"{doc}: {ref}")
        for ref in set(COMMAND_PATTERN.findall(text)):
            if not _placeholder(ref) and _module_file(ref) is None:
                missing.append(f"{doc}: python -m {ref}")
    assert not missing, "\n".join(sorted(set(missing)))


def test_the_checker_sees_what_is_missing():
    """Known answers: a real module, a real name, a made-up module, a made-up name, a made-up file."""
    assert _module_reference_exists("ankh_jax.storage.paths")
    assert _module_reference_exists("ankh_jax.storage.paths.as_path")
    assert not _module_reference_exists("ankh_jax.storage.no_such_module")
    assert not _module_reference_exists("ankh_jax.storage.paths.no_such_name")
    assert FILE_PATTERN.findall("see scripts/no_such_script.py and configs/x.gin") == ["scripts/no_such_script.py",
                                                                                      "configs/x.gin"]
