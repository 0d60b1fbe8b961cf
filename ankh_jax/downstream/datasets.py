"""Local readers for downstream data in the layout of the ``proteinea/*`` datasets on the HuggingFace hub.

Nothing is downloaded. A *split source* is one of:

* a CSV file (``train.csv``, ``CB513.csv``, ...) with a header row;
* a split directory written by ``datasets.Dataset.save_to_disk`` (``state.json`` + ``data-*.arrow``), or
  ``DIR:SPLIT`` / ``DIR/SPLIT`` for a ``DatasetDict.save_to_disk`` directory (``dataset_dict.json``).
  These are read with pyarrow alone; the ``datasets`` library is not needed.

Columns are looked up by name (every task makes its column names gin-configurable); a missing column, an empty
cell or an unparsable value raises :class:`DataError` naming the file, the row (1-based, header excluded) and the
column.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import sys

import numpy as np

from ankh_jax.errors import InputError
from ankh_jax.parsing import try_float


class DataError(InputError):
    """A downstream data file does not have what the task expects; the message names file, row and column."""


def _arrow_split_files(path: str) -> list[str]:
    state = os.path.join(path, "state.json")
    if os.path.exists(state):
        with open(state) as f:
            files = [os.path.join(path, d["filename"]) for d in json.load(f).get("_data_files", [])]
        if files:
            return files
    files = sorted(glob.glob(os.path.join(path, "*.arrow")))
    if not files:
        raise DataError(f"{path}: no state.json / *.arrow files: not a `save_to_disk` split directory")
    return files


def _resolve(source: str) -> tuple[str, str]:
    """('csv' | 'arrow', path) for a split source."""
    if os.path.isfile(source):
        return "csv", source
    if os.path.isdir(source):
        if os.path.exists(os.path.join(source, "dataset_dict.json")):
            with open(os.path.join(source, "dataset_dict.json")) as f:
                splits = json.load(f).get("splits", [])
            raise DataError(f"{source} is a DatasetDict; name a split: {source}:SPLIT with SPLIT in {splits}")
        return "arrow", source
    if ":" in source:
        root, split = source.rsplit(":", 1)
        if os.path.isdir(os.path.join(root, split)):
            return "arrow", os.path.join(root, split)
    raise DataError(f"{source}: no such CSV file or save_to_disk directory")


def _read_arrow(path: str, columns: list[str]) -> dict[str, list]:
    import pyarrow as pa

    tables = []
    for file in _arrow_split_files(path):
        with pa.memory_map(file) as source:
            try:
                tables.append(pa.ipc.open_stream(source).read_all())
            except pa.ArrowInvalid:
                tables.append(pa.ipc.open_file(source).read_all())
    table = pa.concat_tables(tables)
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; the dataset has {table.column_names}")
    return {c: table.column(c).to_pylist() for c in columns}


def _read_csv(path: str, columns: list[str]) -> dict[str, list]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in columns if c not in header]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}; the header has {header}")
        out = {c: [] for c in columns}
        for row in reader:
            for c in columns:
                out[c].append(row[c])
    return out


def read_columns(source: str, columns: list[str]) -> dict[str, list]:
    """The named columns of a split source (CSV or save_to_disk), as lists of cell values."""
    kind, path = _resolve(source)
    data = _read_arrow(path, columns) if kind == "arrow" else _read_csv(path, columns)
    for c in columns:
        for row, value in enumerate(data[c], start=1):
            if value is None or (isinstance(value, str) and not value.strip()):
                raise DataError(f"{source}: row {row}: empty value in column {c!r}")
    return data


def parse_float(value, *, source: str, row: int, column: str) -> float:
    """A finite number: a NaN or infinite label would rank as an extreme value, or make the loss NaN."""
    number = try_float(value)
    if number is None:
        raise DataError(f"{source}: row {row}, column {column!r}: {value!r} is not a number")
    if not np.isfinite(number):
        raise DataError(f"{source}: row {row}, column {column!r}: {value!r} is not a finite number")
    return number


def parse_float_list(value, *, source: str, row: int, column: str) -> np.ndarray:
    """A list cell of finite numbers: a python list (arrow), or text like ``'0.0 1.0 1.0'`` / ``'[0.0, 1.0]'``
    (CSV)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        items = list(np.asarray(value, dtype=object).ravel())
    else:
        items = str(value).replace("[", " ").replace("]", " ").replace(",", " ").split()
    parsed = [try_float(v) for v in items]
    if None in parsed:
        raise DataError(f"{source}: row {row}, column {column!r}: not a list of numbers: {str(value)[:60]!r}")
    numbers = np.asarray(parsed, np.float64)
    if not np.isfinite(numbers).all():
        position = int(np.flatnonzero(~np.isfinite(numbers))[0]) + 1
        raise DataError(f"{source}: row {row}, column {column!r}: value {position} is not a finite number")
    return numbers


def parse_coordinates(value, *, source: str, row: int, column: str, length: int) -> np.ndarray:
    """An [L, 3] coordinate cell: nested lists (arrow) or a flat / nested list of numbers (CSV); NaN allowed."""
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (list, tuple)):
        rows = [[np.nan if v is None else float(v) for v in r] for r in value]
        arr = np.asarray(rows, np.float64)
    else:
        text = value if not isinstance(value, (list, tuple)) else " ".join(map(str, value))
        items = str(text).replace("[", " ").replace("]", " ").replace(",", " ").split()
        parsed = [try_float(v) for v in items]
        if None in parsed:
            raise DataError(f"{source}: row {row}, column {column!r}: coordinates are not numbers")
        flat = np.asarray(parsed, np.float64)
        arr = flat.reshape(-1, 3) if flat.size % 3 == 0 else flat
    if arr.ndim == 2 and arr.shape == (3, length) and length != 3:
        arr = arr.T  # TAPE stores [3, L]
    if arr.shape != (length, 3):
        raise DataError(f"{source}: row {row}, column {column!r}: coordinates of shape {arr.shape}, expected "
                        f"({length}, 3) for a sequence of {length} residues")
    return arr
