"""What every bench script records with its numbers, and where: ``benchmarks/results/<script>-<device>-<date>.json``.

One document per run: the table (a list of rows, each a dict), the command that produced it, when (UTC date
and time), the commit (with ``+dirty`` when the working tree had changes), the versions of jax / flax / torch /
transformers, the CPU model and core count, the accelerator where one was used, and the script's settings.
``--quick`` runs (smoke tests) write under ``benchmarks/results/quick/`` (ignored by git) so they never replace a
real measurement.

Also what every bench script sets up the same way: importing this module puts the repository first on
``sys.path`` (a script runs the checkout's ``ankh_jax``), :func:`make_parser` makes the script's parser with the common
flags, and :func:`fake_cpu_devices` asks for fake CPU devices before jax is imported.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from importlib import metadata

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO, "benchmarks", "results")
VERSIONED = ("jax", "jaxlib", "flax", "optax", "torch", "transformers")
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"  # the 20 standard ones, the letters of synthetic proteins
sys.path.insert(0, REPO)


def make_parser(doc: str, *, quick_help: str) -> argparse.ArgumentParser:
    """A script's parser: described by the first paragraph of its docstring ``doc``, with ``--quick`` (a smoke
    test in well under a minute, what it shrinks is ``quick_help``), ``--out_dir`` and ``--tag``."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=f"smoke test: {quick_help}")
    p.add_argument("--out_dir", default=None,
                   help="where the JSON goes (default benchmarks/results, or benchmarks/results/quick with "
                        "--quick)")
    p.add_argument("--tag", default=None,
                   help="appended to the result's file name (<script>-<device>-<date>-<tag>.json), so runs of "
                        "one day (before / after a change, other settings) keep their own records")
    return p


def fake_cpu_devices(count: int) -> None:
    """``count`` fake CPU devices and the CPU platform, unless the environment says otherwise; call before jax is
    imported."""
    os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={count}")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> dict:
    """Installed versions, read from package metadata (nothing is imported)."""
    out = {}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def commit() -> str:
    def git(*cmd):
        return subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()

    head = git("rev-parse", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def accelerators() -> list[str]:
    """The GPU models ``nvidia-smi`` lists (empty without one); no framework is imported for it."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, check=False, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def format_table(head: list[str], rows: list[list]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    return "\n".join(" | ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in [head] + rows)


def _portable(value):
    """A setting as a committed record may hold it: absolute paths inside the repo relative to it, others reduced
    to their file name (a record never names a directory of the machine that wrote it)."""
    if not (isinstance(value, str) and os.path.isabs(value)):
        return value
    inside = os.path.relpath(value, REPO)
    return os.path.basename(value) if inside.startswith("..") else inside


def write_result(script: str, device: str, *, head: list[str], rows: list[list], settings: dict,
                 out_dir: str | None = None, quick: bool = False, **extra) -> str:
    """Writes the run's document (see the module docstring) and returns its path. ``script``: the bench's name
    (``bench_train``); ``device``: ``cpu`` / ``gpu`` (or a longer tag); ``extra``: anything else worth keeping
    (raw measurements, the model's sizes, peaks measured in the run)."""
    now = datetime.datetime.now(datetime.UTC)
    today = now.strftime("%Y-%m-%d")
    out_dir = out_dir or (os.path.join(RESULTS_DIR, "quick") if quick else RESULTS_DIR)
    clean = {k: _portable(v) for k, v in settings.items() if not k.startswith("_")}
    doc = {"script": script, "command": " ".join(["python", f"scripts/{script}.py"] + sys.argv[1:]),
           "commit": commit(), "date": today, "time": now.strftime("%H:%M:%S"), "device": device,
           "versions": versions(), "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "accelerators": accelerators(), "quick": quick, "settings": clean,
           "table": [dict(zip(head, r)) for r in rows], **extra}
    os.makedirs(out_dir, exist_ok=True)
    tag = settings.get("tag")
    path = os.path.join(out_dir, f"{script}-{device}-{today}{'-' + tag if tag else ''}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(doc, f, indent=1, default=str)
    os.replace(path + ".tmp", path)
    print(f"wrote {os.path.relpath(path, os.getcwd()) if path.startswith(os.getcwd()) else path}")
    return path
