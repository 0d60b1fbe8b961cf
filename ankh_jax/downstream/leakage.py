"""Leakage between a task's splits: validation and test sequences identical to training ones, and repeated rows.

A test protein that is also a training protein measures memory, not prediction: the classic benchmark error of the
field. Fine-tuning counts, per split, its rows, its ``duplicates`` (rows whose sequence already occurred in an
earlier row of the same split) and, for every split but training, ``in_train`` (rows whose sequence is a training
sequence). Sequences are compared whole and cleaned (``max_length`` crops are not what is compared). The run
reports the counts in ``results.json`` and ``run.json`` and warns on stderr; with ``run.strict = True`` it refuses
to start instead (one line, exit 2).
"""

from __future__ import annotations

from ankh_jax.errors import InputError

TRAIN = "train"


class LeakageError(InputError):
    """A run with ``run.strict = True`` whose splits share or repeat sequences."""


def count_leakage(splits: dict) -> dict[str, dict[str, int]]:
    """``{split: {"rows", "duplicates"[, "in_train"]}}`` for ``splits`` (name -> ``task_spec.Examples``)."""
    training = set(splits[TRAIN].whole_sequences()) if TRAIN in splits else set()
    report = {}
    for name, examples in splits.items():
        sequences = examples.whole_sequences()
        counts = {"rows": len(sequences), "duplicates": len(sequences) - len(set(sequences))}
        if name != TRAIN and TRAIN in splits:
            counts["in_train"] = sum(s in training for s in sequences)
        report[name] = counts
    return report


def findings(report: dict[str, dict[str, int]]) -> list[str]:
    """What leaks, one phrase per finding (empty when nothing does)."""
    found = []
    for name, counts in report.items():
        if counts.get("in_train"):
            found.append(f"{name}: {counts['in_train']} of {counts['rows']} sequences identical to training ones")
        if counts["duplicates"]:
            found.append(f"{name}: {counts['duplicates']} of {counts['rows']} rows repeat an earlier sequence")
    return found


def check(task: str, report: dict[str, dict[str, int]], *, strict: bool, warn) -> None:
    """Warns (one line through ``warn``) about what leaks; with ``strict``, raises :class:`LeakageError` instead."""
    found = findings(report)
    if not found:
        return
    if strict:
        raise LeakageError(f"task {task}: the splits leak ({'; '.join(found)}); run.strict = True refuses such a "
                           "run: remove the repeated sequences, or leave run.strict unset to run with a warning")
    warn(f"warning: task {task}: the splits leak ({'; '.join(found)}); counts in results.json under \"leakage\"")
