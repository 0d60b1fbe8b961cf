"""Test-wide setup: eight fake CPU devices stand in for a pod slice.

XLA reads the flag once, when jax first initialises its backend, so it must be set before any test imports jax.
Tests that need a single device use ``jax.devices()[:1]``; sharding tests build meshes over all eight.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The commands' persistent compilation cache (ankh_jax.storage.home): one fresh folder per test run, shared by
# both xdist workers and every process a test starts (``shared_compilation_cache``); never the user's own.
_USER_CACHE = os.environ.get("ANKH_JAX_COMPILATION_CACHE")

import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
DATA = REPO / "data"


@pytest.fixture(scope="session", autouse=True)
def shared_compilation_cache(tmp_path_factory):
    """jax's persistent compilation cache in a folder every worker of this run shares (pytest's run folder, which
    it prunes), so a program compiled once, in any test or process, is loaded by the next one. jax keys entries by
    program, shapes, shardings and devices, so nothing a test checks depends on it: a test about the cache names
    its own folder. ``ANKH_JAX_COMPILATION_CACHE=''`` (or any folder) set by the caller wins."""
    from ankh_jax.storage.home import enable_compilation_cache

    if _USER_CACHE is not None:
        directory = _USER_CACHE
    else:  # under xdist each worker's folder is popen-gwN inside the run's folder
        run_folder = tmp_path_factory.getbasetemp()
        if os.environ.get("PYTEST_XDIST_WORKER"):
            run_folder = run_folder.parent
        directory = str(run_folder / "xla_cache")
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
