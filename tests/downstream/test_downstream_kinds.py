"""The label kinds registry: every kind's name lives in ``downstream/kinds.py`` alone, and each record is whole."""

import ast
import pathlib

import numpy as np
import pytest

from ankh_jax.downstream import kinds

REPO = pathlib.Path(__file__).resolve().parents[2]


def _string_literals(path: pathlib.Path):
    """(line, text) of every string constant, except what declares a task (``TaskSpec(kind=..., name=...)``) and
    the heads' own ``task_kind`` attribute (the ``ankh`` package's names for its heads)."""
    tree = ast.parse(path.read_text())
    declared = {id(k.value) for node in ast.walk(tree) if isinstance(node, ast.Call)
                for k in node.keywords if k.arg in ("kind", "name")}
    declared |= {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id == "task_kind" for t in node.targets)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in declared:
            yield node.lineno, node.value


def test_no_code_outside_kinds_py_names_a_label_kind():
    """Issue 22: the kind was a string switch in 6 files (about 46 branches). A kind's name may appear in a task's
    declaration (``TaskSpec(kind=...)``) and in docstrings, never as a value compared against."""
    names = set(kinds.KINDS)
    found = []
    for path in sorted([*(REPO / "ankh_jax").rglob("*.py"), *(REPO / "tasks").rglob("*.py")]):
        if path.name == "kinds.py":
            continue
        found += [f"{path.relative_to(REPO)}:{line}: {text!r}" for line, text in _string_literals(path)
                  if text in names]
    assert not found, found


def test_every_kind_that_trains_a_head_has_the_whole_record():
    for kind in kinds.KINDS.values():
        parts = [kind.label_array, kind.head, kind.loss, kind.outputs, kind.score]
        assert all(p is not None for p in parts) or (kind.run_without_head and not any(parts)), kind.name
        assert kind.per_residue == (kind.crop is not None), kind.name


def test_an_unknown_kind_or_a_metric_the_kind_does_not_have_is_one_input_error():
    from ankh_jax.downstream.task_spec import TaskSpec
    from ankh_jax.errors import InputError

    with pytest.raises(InputError, match=r"task t: label kind 'residue' is not one of \('sequence_class'"):
        TaskSpec(name="t", kind="residue", metric="accuracy", data_dir="", train=None, valid=None, tests=())
    with pytest.raises(InputError, match="metric 'spearman' is not defined for label kind 'sequence_class'"):
        TaskSpec(name="t", kind="sequence_class", metric="spearman", data_dir="", train=None, valid=None, tests=())


def test_outputs_and_scores_per_kind_on_known_logits():
    """Logits of two rows (the second padded) give the outputs and metrics worked out by hand."""
    lengths = [3, 2]
    residue = np.zeros((2, 4, 3), np.float32)
    residue[0, :, 0] = 1.0                     # row 0: class 0 everywhere
    residue[1, :, 2] = 1.0                     # row 1: class 2 everywhere
    out = kinds.get("residue_class").outputs(residue, lengths)
    assert [o.tolist() for o in out] == [[0, 0, 0], [2, 2]]
    labels = [np.array([0, 1, -100]), np.array([2, 0])]   # 4 scored residues, 2 right
    assert kinds.get("residue_class").score_outputs(out, labels) == {"accuracy": 0.5}
    binary = np.array([[2.0], [-1.0], [0.5]], np.float32)
    out = kinds.get("sequence_binary").outputs(binary, [5, 5, 5])
    assert kinds.get("sequence_binary").score_outputs(out, [1, 1, 1]) == {"accuracy": pytest.approx(2 / 3)}
    regression = np.array([[1.0], [3.0], [2.0]], np.float32)
    out = kinds.get("sequence_regression").outputs(regression, [5, 5, 5])
    assert kinds.get("sequence_regression").score_outputs(out, [10.0, 30.0, 20.0]) == {"spearman": 1.0}
