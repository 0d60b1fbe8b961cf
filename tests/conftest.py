"""Test-wide setup: eight fake CPU devices stand in for a pod slice, compiled for quickly.

XLA reads the flag once, when jax first initialises its backend, so it must be set before any test imports jax.
Tests that need a single device use ``jax.devices()[:1]``; sharding tests build meshes over all eight.
"""

import os

# The suite compiles hundreds of small programs and runs each a few times, so compiling is most of its time: XLA's
# CPU backend without its optimisation passes compiles them ~40% faster (tests/model, inference, downstream: 168 s
# -> 103 s on 2 cores), and its older loop emitters instead of the fusion emitters about twice as fast again (a tiny
# Transformer's gradient 0.98 -> 0.50 s, a ConvBERT head 0.42 -> 0.19 s; they run ~40% slower, a few ms here).
# What the tests check does not depend on them: numerics are compared with stated tolerances and runs with each
# other under the same flags. Processes a test starts inherit these (tests/multihost/harness.py).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0 "
                      "--xla_llvm_disable_expensive_passes=true --xla_cpu_use_fusion_emitters=false")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The commands' persistent compilation cache (ankh_jax.storage.home): one fresh folder per test run, shared by
# both xdist workers and every process a test starts (``shared_compilation_cache``), unless the caller set one.
_USER_CACHE = os.environ.get("ANKH_JAX_COMPILATION_CACHE")

import pathlib
import shutil

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
DATA = REPO / "data"


def pytest_collection_modifyitems(config, items):
    """Longest files first, by the newest per-file record (``scripts/test_durations.py``): with ``-n 2 --dist
    loadfile --no-loadscope-reorder`` (the Makefile's) xdist hands out files in this order, so the multi-process
    files start at once and the many short ones fill in at the end, instead of the long ones running last."""
    import json

    records = [json.loads(p.read_text()) for p in (REPO / "benchmarks" / "results").glob("test_durations-*.json")]
    if not records:
        return
    newest = max(records, key=lambda r: (r["date"], r.get("time", "")))  # records before "time" was kept: 00:00
    seconds = {row["file"]: row["seconds"] for row in newest["table"]}
    items.sort(key=lambda item: -seconds.get(item.nodeid.split("::")[0], 0.0))  # stable: in-file order kept


def _run_folder(tmp_path_factory) -> pathlib.Path:
    """pytest's folder for this run, shared by every xdist worker (each has its own popen-gwN inside it)."""
    folder = tmp_path_factory.getbasetemp()
    return folder.parent if os.environ.get("PYTEST_XDIST_WORKER") else folder


@pytest.fixture(scope="session")
def pod_reference(tmp_path_factory) -> pathlib.Path:
    """The 2-host reference run (``tests/multihost/pod_runs.py``: 2 processes x 4 fake devices, 12 steps,
    checkpoints at 4, 8 and 12, eval at 6 and 12), made once per test run for every file and xdist worker that
    compares with it: the first to ask makes it under a file lock, the others wait and read it. No test writes to
    it. Evaluation leaves the training state alone, so runs without eval compare with it bit for bit."""
    import sys

    from filelock import FileLock

    sys.path.insert(0, str(REPO / "tests" / "multihost"))
    import pod_runs

    model_dir = _run_folder(tmp_path_factory) / "pod_reference" / "run"
    with FileLock(str(model_dir.parent) + ".lock"):
        if not (model_dir.parent / "done").exists():
            shutil.rmtree(model_dir.parent, ignore_errors=True)  # a run that failed half-way in another worker
            pod_runs.run(model_dir)
            (model_dir.parent / "done").write_text("")
    return model_dir


@pytest.fixture(scope="session", autouse=True)
def shared_compilation_cache(tmp_path_factory):
    """jax's persistent compilation cache in a folder every worker of this run shares (pytest's run folder, which
    it prunes), so a program compiled once, in any test or process, is loaded by the next one. jax keys entries by
    program, shapes, shardings and devices, so nothing a test checks depends on it: a test about the cache names
    its own folder. ``ANKH_JAX_COMPILATION_CACHE=''`` (or any folder) set by the caller wins."""
    from ankh_jax.storage.home import enable_compilation_cache

    directory = _USER_CACHE if _USER_CACHE is not None else str(_run_folder(tmp_path_factory) / "xla_cache")
    os.environ["ANKH_JAX_COMPILATION_CACHE"] = directory
    enable_compilation_cache(directory)
    yield directory


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO


@pytest.fixture(scope="session")
def sample_fasta() -> pathlib.Path:
    """1,446 real Swiss-Prot/Pfam proteins shipped in data/ (see data/README.md)."""
    return DATA / "sample_proteins.fasta"


@pytest.fixture(scope="session")
def random_encoder_dir(tmp_path_factory):
    """``(seed=0, layers=None) -> path``: a tiny random encoder (``ankh_jax.testing.write_random_encoder``) as a
    HuggingFace directory, written once per session for each (seed, layers); it goes wherever a model directory
    does (``--gin.ENCODER=...``, ``--model=...``)."""
    from ankh_jax import testing

    written: dict[tuple, str] = {}

    def make(seed: int = 0, layers: int | None = None) -> str:
        if (seed, layers) not in written:
            directory = tmp_path_factory.mktemp(f"random_tiny_{seed}_{layers}") / "encoder"
            written[(seed, layers)] = testing.write_random_encoder(directory, "tiny", seed, layers)
        return written[(seed, layers)]

    return make
