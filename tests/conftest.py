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
# The commands' persistent compilation cache (ankh_jax.storage.home) stays off unless a test turns it on.
os.environ.setdefault("ANKH_JAX_COMPILATION_CACHE", "")

import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
DATA = REPO / "data"


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
