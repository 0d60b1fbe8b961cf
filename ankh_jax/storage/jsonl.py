"""JSON-lines files (``metrics.jsonl`` of pretraining and fine-tuning runs): one reader, one writer.

Reading: a run killed mid-write leaves a partial last line (local disk), so a line that does not parse is reported
by number rather than raised, and each reader decides what to do with it (the trainer's resume drops a partial
last line, plots skip and say so). No heavy imports: plotting a metrics file must not start jax.

Writing (:class:`JsonlWriter`): locally each row is appended whole. Object storage has no append, so there the
writer keeps the file's rows and uploads the whole object again after each row; one upload is atomic, so the
object always holds whole rows. Either way :meth:`JsonlWriter.keep` rewrites the file once, atomically, with only
the rows a resumed run keeps, so after a kill and resume every row is there exactly once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from ankh_jax.storage import atomic
from ankh_jax.storage.paths import PathLike, as_path, is_remote, local


def _parse(data: bytes) -> tuple[list[dict], list[int], bool]:
    rows, bad = [], []
    for number, raw in enumerate(data.split(b"\n"), 1):
        line = raw.decode("utf-8", errors="replace").strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad.append(number)
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad.append(number)
    return rows, bad, data.endswith(b"\n") or not data


def read_jsonl(path: PathLike) -> tuple[list[dict], list[int]]:
    """``(rows, bad_line_numbers)``: the JSON objects of the file, in order, and the 1-based numbers of the lines
    that are not a JSON object (blank lines are neither)."""
    rows, bad, _ = _parse(as_path(path).read_bytes())
    return rows, bad


def line_count(path: PathLike) -> int:
    data = as_path(path).read_bytes()
    return data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)


class JsonlWriter:
    """Appends rows to a JSON-lines file, local or ``gs://``."""

    def __init__(self, path: PathLike):
        self.path = as_path(path)
        self._remote = is_remote(path)
        self._rows: list[dict] | None = None  # object storage: the rows the object holds

    def keep(self, predicate: Callable[[dict], bool], rows: list[dict]) -> None:
        """Rewrites the file (atomically, only if anything changes) with the ``rows`` that satisfy ``predicate``;
        ``rows`` are the file's parsed rows (a partial last line already dropped)."""
        kept = [r for r in rows if predicate(r)]
        if self._remote:
            self._rows = kept
        exists = self.path.exists()
        intact = not exists or _parse(self.path.read_bytes())[2]
        if exists and (len(kept) != len(rows) or not intact):
            atomic.write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def append(self, row: dict) -> None:
        line = json.dumps(row) + "\n"
        if not self._remote:
            destination = local(self.path)
            os.makedirs(os.path.dirname(destination), exist_ok=True)
            with open(destination, "a") as f:
                f.write(line)
            return
        if self._rows is None:
            self._rows = read_jsonl(self.path)[0] if self.path.exists() else []
        self._rows.append(row)
        atomic.write_text(self.path, "".join(json.dumps(r) + "\n" for r in self._rows))
