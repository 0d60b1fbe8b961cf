"""Every pytest marker pyproject.toml declares is used by some test (a declared, unused marker such as a `slow`
that no test carries promises a split of the suite that does not exist)."""

import pathlib
import re
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_declared_markers_are_used():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    declared = [m.split(":")[0].strip() for m in config.get("markers", [])]
    sources = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("*.py"))
    unused = [m for m in declared if not re.search(rf"pytest\.mark\.{re.escape(m)}\b|pytestmark.*\b{m}\b", sources)]
    assert not unused, f"declared in pyproject.toml but used by no test: {unused}"
