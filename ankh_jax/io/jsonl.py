"""Reading the project's JSON-lines files (``metrics.jsonl`` of pretraining and fine-tuning runs).

One parser for every reader: a run killed mid-write leaves a partial last line, so a line that does not parse is
reported by number rather than raised, and each reader decides what to do with it (the trainer's resume drops a
partial last line, plots skip and say so). No heavy imports: plotting a metrics file must not start jax.
"""

from __future__ import annotations

import json


def read_jsonl(path: str) -> tuple[list[dict], list[int]]:
    """``(rows, bad_line_numbers)``: the JSON objects of the file, in order, and the 1-based numbers of the lines
    that are not a JSON object (blank lines are neither)."""
    rows, bad = [], []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
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
    return rows, bad
