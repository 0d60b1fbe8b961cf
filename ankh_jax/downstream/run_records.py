"""A fine-tuning ``MODEL_DIR``'s records, and what a re-run into it may do: finish the same run, nothing else.

``MODEL_DIR/run.json`` holds the run's identity, written first: the task (files, columns, crop), the mode, the seed,
the head, optimizer and LoRA settings, the embedding dtypes and the encoder's *weights fingerprint* (not its path:
a directory trained further or replaced in place is another encoder; a symlink to the same weights is not).
A re-run with the same identity resumes (an interrupted run continues from its last finished epoch; a finished one,
with ``results.json``, only prints its results); any other identity is refused before anything is written,
naming what differs. A directory with fine-tuning outputs but no ``run.json`` is refused too: nothing says which
run wrote them.

Every record is written whole or not at all (:func:`write_json_atomically`); ``metrics.jsonl`` is append-only
while a run trains (``ankh_jax.training.metrics.MetricsWriter``, which on resume rewrites it to the steps of the
epochs kept, dropping a line cut short by a crash).
"""

from __future__ import annotations

import json
import os
from typing import Any

from ankh_jax.errors import InputError
from ankh_jax.parsing import JSON_ERRORS
from ankh_jax.training.metrics import METRICS_FILE

RUN_FILE = "run.json"
RESULTS_FILE = "results.json"
CONFIG_FILE = "config.gin"
LABELS_FILE = "labels.json"
BEST_DIR = "best"
EPOCH_STATE_DIR = "last_epoch"
OUTPUT_NAMES = (RESULTS_FILE, METRICS_FILE, CONFIG_FILE, LABELS_FILE, BEST_DIR, EPOCH_STATE_DIR,
                "attention_logreg.npz")

FRESH, RESUME, COMPLETE = "fresh", "resume", "complete"


class RunMismatchError(InputError):
    """``MODEL_DIR`` holds another run (or outputs of an unknown one)."""


def write_atomically(path: str, text: str) -> None:
    """``path`` holds either its old content or all of ``text``, never part of it (a kill at any moment)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomically(path: str, obj: Any) -> None:
    write_atomically(path, json.dumps(obj, indent=1))


def read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, *JSON_ERRORS) as err:
        raise RunMismatchError(f"{path}: unreadable ({type(err).__name__}: {err})") from None


def check_model_dir(model_dir: str) -> None:
    """Refuses a ``MODEL_DIR`` that cannot hold a run (an existing file)."""
    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise RunMismatchError(f"MODEL_DIR {model_dir} is a file, not a directory")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def differences(stored: dict, current: dict) -> list[str]:
    """``"name: old in run.json, new now"`` for each setting that differs (flattened, dotted names)."""
    old, new = _flatten(stored), _flatten(current)
    return [f"{name}: {old.get(name, '(unset)')!r} in {RUN_FILE}, {new.get(name, '(unset)')!r} now"
            for name in sorted(set(old) | set(new)) if old.get(name) != new.get(name)]


def state_of(model_dir: str, identity: dict) -> str:
    """FRESH, RESUME or COMPLETE for a run of ``identity`` into ``model_dir``; raises if it holds another run
    (``run.json`` is ``{"identity": ..., "encoder_source": ...}``; only the identity is compared).

    ``identity`` must be JSON-normal (what ``json.loads(json.dumps(x))`` gives) to compare with the stored one.
    Reads only: call it before writing anything, and again once the directory is locked.
    """
    check_model_dir(model_dir)
    if not os.path.isdir(model_dir):
        return FRESH
    run_file = os.path.join(model_dir, RUN_FILE)
    if not os.path.exists(run_file):
        found = [n for n in OUTPUT_NAMES if os.path.exists(os.path.join(model_dir, n))]
        if found:
            raise RunMismatchError(f"{model_dir} holds fine-tuning outputs {found} but no {RUN_FILE} saying which "
                                   "run wrote them; choose another MODEL_DIR")
        return FRESH
    stored = read_json(run_file)
    diffs = differences(stored.get("identity", {}), identity)
    if diffs:
        shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
        if any(d.startswith("encoder_fingerprint") for d in diffs):
            shown += f" (its ENCODER was {stored.get('encoder_source')!r}: other weights than this run's)"
        raise RunMismatchError(f"{model_dir} holds another run ({shown}); refusing to mix two runs in one "
                               "directory: choose another MODEL_DIR")
    return COMPLETE if os.path.exists(os.path.join(model_dir, RESULTS_FILE)) else RESUME
